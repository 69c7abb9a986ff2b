"""A small registry for the composition tests, uploaded through the API once per session.

f (torch_export): (3, 6, 6) → (4, 6, 6); g_s (torch_export, generic): (4, 6, 6) → 3 logits;
g_t (torch_export, trained on "bird": the teacher's head, a native pair with f); h (safetensors
adapter with `arch`): (4, 6, 6) → (4, 6, 6). "owl" has f (the same bytes) and an adapter but no teacher.
Uploads are torch_export or safetensors: TorchScript is refused (transplant/allowlist.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_TOKEN
from transplant.adapters import build_adapter, fit_adapter_config, save_adapter
from transplant.artifacts import load_module, save_module

X_SHAPE = [None, 3, 6, 6]
FEAT_SHAPE = [None, 4, 6, 6]


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU())
    g_s = nn.Sequential(nn.Conv2d(4, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 3))
    g_t = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(5 * 36, 3))
    for m in (f, g_s, g_t):
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial running stats: eval mode matters
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        m.eval()
    return {"f": f, "g_s": g_s, "g_t": g_t}


@dataclass
class Artifacts:
    f: bytes
    g_s: bytes
    g_t: bytes
    h: bytes
    h_spec: dict


@pytest.fixture(scope="session")
def artifacts() -> Artifacts:
    nets = _nets()
    x, feats = torch.zeros(2, 3, 6, 6), torch.zeros(2, 4, 6, 6)
    cfg = fit_adapter_config((4, 6, 6), (4, 6, 6), layers=2)
    h = build_adapter(cfg)
    with torch.no_grad():
        for p in h.parameters():  # away from the identity start, so h visibly matters
            p.add_(torch.randn_like(p) * 0.3)
    h_bytes, spec = save_adapter(h, cfg)
    return Artifacts(
        f=save_module(nets["f"], x, "torch_export"),
        g_s=save_module(nets["g_s"], feats, "torch_export"),
        g_t=save_module(nets["g_t"], feats, "torch_export"),
        h=h_bytes,
        h_spec=spec,
    )


def make_module(api: TestClient, name: str, kind: str, **extra) -> None:
    resp = api.post("/v1/modules", json={"name": name, "kind": kind, **extra})
    assert resp.status_code == 201, resp.text


def upload(api: TestClient, name: str, data: bytes, fmt: str, input_shape: list, **meta) -> dict:
    body = {"format": fmt, "input_shape": input_shape, **meta}
    resp = api.post(
        f"/v1/modules/{name}/versions",
        files={"file": ("artifact.bin", data, "application/octet-stream")},
        data={"meta": json.dumps(body)},
    )
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def register_base(api: TestClient, art: Artifacts, category: str = "bird", task: str = "classify") -> None:
    """f for `category`, the generic task module and the teacher's task module (no adapter)."""
    make_module(api, f"{category}-f", "category", category=category)
    upload(api, f"{category}-f", art.f, "torch_export", X_SHAPE)
    make_module(api, f"{task}-generic", "task", task=task)
    upload(api, f"{task}-generic", art.g_s, "torch_export", FEAT_SHAPE, trained_on=["cat", "dog"])
    make_module(api, f"{category}-{task}-teacher", "task", task=task)
    upload(api, f"{category}-{task}-teacher", art.g_t, "torch_export", FEAT_SHAPE, trained_on=[category])


def register_adapter(api: TestClient, art: Artifacts, category: str = "bird", task: str = "classify",
                     name: str | None = None, metrics: dict | None = None) -> dict:
    name = name or f"{category}-{task}-h"
    if api.get(f"/v1/modules/{name}").status_code == 404:
        make_module(api, name, "adapter", category=category, task=task)
    return upload(api, name, art.h, "safetensors", FEAT_SHAPE, arch=art.h_spec, metrics=metrics or {})


def local_module(api: TestClient, ref: dict, tmp: Path) -> nn.Module:
    """Download the artifact of `ref` and load it here, as a client would."""
    info = api.get(f"/v1/modules/{ref['name']}/versions/{ref['version']}").json()
    data = api.get(f"/v1/modules/{ref['name']}/versions/{ref['version']}/artifact").content
    path = tmp / f"{ref['name']}-{ref['version']}"
    path.write_bytes(data)
    return load_module(path, info["format"], info.get("arch"))


# bird's own teacher pair; a cell composition now prefers bird's adapter into the generic module.
NATIVE_BIRD = {"category_module": "bird-f", "adapter": None, "task_module": "bird-classify-teacher"}


def local_forward(api: TestClient, composition: dict, x: np.ndarray, tmp: Path) -> np.ndarray:
    """f → h → g computed locally from the downloaded artifacts."""
    pieces = [composition["category_module"], composition["adapter"], composition["task_module"]]
    modules = [local_module(api, ref, tmp) for ref in pieces if ref is not None]
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    with torch.inference_mode():
        for m in modules:
            t = m(t)
    return t.numpy()


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, artifacts: Artifacts) -> Iterator[TestClient]:
    """One embedded server for the session: bird's and owl's pieces, adapters, small predict limits."""
    data_dir = tmp_path_factory.mktemp("graft")
    settings = Settings(data_dir=data_dir, bootstrap_token=ADMIN_TOKEN, predict_max_batch=16,
                        predict_max_wait_ms=20.0)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        register_base(client, artifacts)  # bird: a native pair (its teacher's head)
        register_adapter(client, artifacts, metrics={"agreement": 0.93})
        make_module(client, "owl-f", "category", category="owl")  # owl: only through an adapter
        upload(client, "owl-f", artifacts.f, "torch_export", X_SHAPE)
        register_adapter(client, artifacts, category="owl", metrics={"agreement": 0.88})
        yield client
