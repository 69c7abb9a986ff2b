"""Per-module write protection: tokens of different owners cannot push versions into each other's modules."""

from __future__ import annotations

import io

import torch
from fastapi.testclient import TestClient
from torch import nn

from transplant.artifacts import save_module


def _token(api: TestClient, name: str, scope: str = "write") -> dict[str, str]:
    resp = api.post("/v1/tokens", json={"name": name, "scope": scope})
    assert resp.status_code == 201, resp.text
    return {"Authorization": f"Bearer {resp.json()['token']}"}


def _push(api: TestClient, name: str, headers: dict[str, str], seed: int) -> int:
    torch.manual_seed(seed)
    data = save_module(nn.Linear(4, 2), torch.zeros(1, 4), "torch_export")
    meta = '{"format": "torch_export", "input_shape": [null, 4]}'
    files = {"file": ("m.pt", io.BytesIO(data)), "meta": (None, meta)}
    return api.post(f"/v1/modules/{name}/versions", files=files, headers=headers).status_code


def test_only_the_owner_or_an_admin_writes_a_module(embedded_client: TestClient, admin_headers) -> None:
    api = embedded_client
    alice, bob = _token(api, "alice"), _token(api, "bob")
    body = {"name": "alice-cls", "kind": "task", "task": "cls"}
    created = api.post("/v1/modules", json=body, headers=alice)
    assert created.status_code == 201, created.text

    assert _push(api, "alice-cls", alice, seed=0) == 201
    assert _push(api, "alice-cls", bob, seed=1) == 403
    refused = api.put("/v1/modules/alice-cls/aliases/prod", json={"version": 1}, headers=bob)
    assert refused.status_code == 403 and "belongs to another token" in refused.json()["detail"]
    assert [v["version"] for v in api.get("/v1/modules/alice-cls/versions").json()["items"]] == [1]

    # Reading stays open to every token; the owner and an admin may write.
    assert api.get("/v1/modules/alice-cls", headers=bob).status_code == 200
    moved = api.put("/v1/modules/alice-cls/aliases/prod", json={"version": 1}, headers=alice)
    assert moved.status_code == 200, moved.text
    assert _push(api, "alice-cls", admin_headers, seed=2) == 201
