"""Loading and the shape probe run with a time and a memory limit: a module that hangs or wants too much
memory is refused with a clear 422, and the server goes on accepting good modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from app.config import Settings
from app.main import create_app
from tests.app.test_modules import IN_SHAPE, conv_net, make_module, upload
from tests.conftest import ADMIN_TOKEN
from transplant.artifacts import save_module

LIMIT_MIB = 256


class MemoryHog(nn.Module):
    """A forward pass that allocates 4 GiB (1 Gi float32 elements) before answering."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(1 << 30)
        return x + big[-1]


class Spinner(nn.Module):
    """Minutes of CPU in a straight line: 200 chained 2048×2048 matrix products (loops are refused)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.ones(2048, 2048)
        for _ in range(200):
            h = (h @ h) * 1e-3
        return x + h[0, 0]


def _exported(module: nn.Module) -> bytes:
    return save_module(module, torch.zeros(2, *IN_SHAPE[1:]), "torch_export")


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    """An API whose probe may take 256 MiB beyond torch (plus room for the weights) and 3 s."""
    settings = Settings(data_dir=tmp_path / "graft", bootstrap_token=ADMIN_TOKEN,
                        probe_max_memory_bytes=LIMIT_MIB * 2**20, probe_timeout_s=3.0)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


def _good_upload_still_works(api: TestClient) -> None:
    resp = upload(api, "probe-f", _exported(conv_net()))
    assert resp.status_code == 201, resp.text
    assert api.get("/healthz").status_code == 200


def test_module_wanting_too_much_memory_is_refused(limited: TestClient) -> None:
    make_module(limited, "probe-f")
    resp = upload(limited, "probe-f", _exported(MemoryHog()))
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "memory limit" in detail and "MiB" in detail
    assert limited.get("/v1/modules/probe-f").json()["versions"] == []  # nothing half-written
    _good_upload_still_works(limited)


def test_module_that_never_finishes_is_refused_in_time(limited: TestClient) -> None:
    make_module(limited, "probe-f")
    resp = upload(limited, "probe-f", _exported(Spinner()))
    assert resp.status_code == 422, resp.text
    assert "longer than 3 s" in resp.json()["detail"]
    assert limited.get("/v1/modules/probe-f").json()["versions"] == []
    _good_upload_still_works(limited)


def test_default_memory_limit_leaves_room_for_ordinary_modules(embedded_client: TestClient) -> None:
    """The default limit (4 GiB beyond torch) is set and does not refuse an ordinary module."""
    assert Settings().probe_max_memory_bytes == 4 * 1024**3
    make_module(embedded_client, "probe-f")
    _good_upload_still_works(embedded_client)
