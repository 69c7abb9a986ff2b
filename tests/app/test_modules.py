"""Modules and versions through the HTTP API, on SQLite+folder and on PostgreSQL+S3 (fixture `api`)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
import torch
from torch import nn

from transplant.artifacts import save_module

IN_SHAPE = [None, 3, 8, 8]


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU(), nn.MaxPool2d(2)).eval()


@pytest.fixture(scope="module")
def artifacts() -> dict[str, bytes]:
    net, x = conv_net(), torch.zeros(2, 3, 8, 8)
    pickled = io.BytesIO()
    torch.save(net, pickled)
    return {
        "torch_export": save_module(net, x, "torch_export"),
        "torch_export_2": save_module(nn.Sequential(net, nn.ReLU()).eval(), x, "torch_export"),
        "torchscript": save_module(net, x, "torchscript"),
        "pickle": pickled.getvalue(),
    }


def make_module(api, name: str = "bird-f", kind: str = "category", **extra) -> dict:
    body = {"name": name, "kind": kind, **extra}
    if kind in ("category", "adapter"):
        body.setdefault("category", "bird")
    if kind in ("task", "adapter"):
        body.setdefault("task", "segment")
    resp = api.post("/v1/modules", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def upload(api, name: str, data: bytes, fmt: str = "torch_export", **meta):
    meta = {"format": fmt, "input_shape": IN_SHAPE, **meta}
    return api.post(
        f"/v1/modules/{name}/versions",
        files={"file": ("model.bin", data, "application/octet-stream")},
        data={"meta": json.dumps(meta)},
    )


@pytest.mark.parametrize("fmt", ["torch_export"])  # TorchScript is refused: tests/hardening
def test_round_trip(api, artifacts, fmt: str) -> None:
    make_module(api)
    data = artifacts[fmt]
    resp = upload(api, "bird-f", data, fmt, trained_on=["sparrow"], metrics={"acc": 0.9})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["version"] == 1
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert body["output_shape"] == [None, 4, 4, 4]
    assert body["trained_on"] == ["sparrow"] and body["metrics"] == {"acc": 0.9}

    download = api.get("/v1/modules/bird-f/versions/1/artifact")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["etag"] == f'"{body["sha256"]}"'
    assert download.content == data
    assert hashlib.sha256(download.content).hexdigest() == body["sha256"]

    again = upload(api, "bird-f", data, fmt)
    assert again.status_code == 200
    assert again.json()["version"] == 1
    assert api.get("/v1/modules/bird-f").json()["versions"][0]["sha256"] == body["sha256"]
    assert len(api.get("/v1/modules/bird-f/versions").json()["items"]) == 1


def test_versions_latest_and_aliases(api, artifacts) -> None:
    make_module(api)
    assert upload(api, "bird-f", artifacts["torch_export"]).json()["version"] == 1
    assert upload(api, "bird-f", artifacts["torch_export_2"]).json()["version"] == 2
    assert api.get("/v1/modules/bird-f/versions/latest").json()["version"] == 2

    resp = api.put("/v1/modules/bird-f/aliases/prod", json={"version": 1})
    assert resp.status_code == 200 and resp.json() == {"name": "bird-f", "alias": "prod", "version": 1}
    assert api.get("/v1/modules/bird-f/versions/prod").json()["version"] == 1
    assert api.put("/v1/modules/bird-f/aliases/prod", json={"version": 2}).status_code == 200
    got = api.get("/v1/modules/bird-f/versions/prod").json()
    assert got["version"] == 2 and got["aliases"] == ["prod"]
    assert api.get("/v1/modules/bird-f").json()["aliases"] == {"prod": 2}

    assert api.put("/v1/modules/bird-f/aliases/prod", json={"version": 9}).status_code == 404
    assert api.put("/v1/modules/bird-f/aliases/latest", json={"version": 1}).status_code == 422
    assert api.get("/v1/modules/bird-f/versions/nope").status_code == 404
    assert api.get("/v1/modules/nope/versions/1").status_code == 404


def test_pickled_module_refused(api, artifacts) -> None:
    make_module(api)
    resp = upload(api, "bird-f", artifacts["pickle"], "torchscript")
    assert resp.status_code == 415
    assert "torch.export.save" in resp.json()["detail"]
    assert api.get("/v1/modules/bird-f").json()["versions"] == []


@pytest.mark.parametrize(
    "case", ["empty", "garbage", "truncated", "wrong_format", "bad_shape", "shape_fails", "huge_shape"]
)
def test_bad_artifacts_are_4xx(api, artifacts, case: str) -> None:
    make_module(api)
    data, fmt, meta = artifacts["torch_export"], "torch_export", {}
    if case == "empty":
        data = b""
    elif case == "garbage":
        data = b"this is not a model" * 100
    elif case == "truncated":
        data = data[: len(data) // 2]
    elif case == "wrong_format":
        fmt = "torchscript"
    elif case == "bad_shape":
        meta = {"input_shape": [3, None, 8]}
    elif case == "shape_fails":
        meta = {"input_shape": [None, 5, 8, 8]}
    elif case == "huge_shape":
        meta = {"input_shape": [None, 3, 100000, 100000]}
    resp = upload(api, "bird-f", data, fmt, **meta)
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["detail"].endswith(".")
    assert api.get("/v1/modules/bird-f").json()["versions"] == []


def test_bad_requests(api, artifacts) -> None:
    make_module(api)
    taken = {"name": "bird-f", "kind": "category", "category": "b"}
    assert api.post("/v1/modules", json=taken).status_code == 409
    for body in (
        {"name": "Bad Name", "kind": "category", "category": "b"},
        {"name": "x", "kind": "teacher"},
        {"name": "t", "kind": "task"},
        {"name": "a", "kind": "adapter", "category": "bird"},
    ):
        resp = api.post("/v1/modules", json=body)
        assert resp.status_code == 422 and resp.json()["detail"]
    no_meta = api.post("/v1/modules/bird-f/versions", files={"file": ("m", artifacts["torchscript"])})
    assert no_meta.status_code == 422
    bad_json = api.post(
        "/v1/modules/bird-f/versions", files={"file": ("m", artifacts["torchscript"])}, data={"meta": "{"}
    )
    assert bad_json.status_code == 422
    arch = upload(api, "bird-f", artifacts["torch_export"], arch={"name": "conv"})
    assert arch.status_code == 422 and "safetensors" in arch.json()["detail"]
    assert api.post("/v1/modules/bird-f/versions", json={"x": 1}).status_code == 415
    assert upload(api, "nope", artifacts["torchscript"], "torchscript").status_code == 404
    assert api.get("/v1/modules", params={"cursor": "garbage!"}).status_code == 400


def test_list_filters_and_pagination(api) -> None:
    for i in range(5):
        make_module(api, f"cat-{i}", "category", category="bird" if i % 2 else "fish")
    make_module(api, "seg", "task", task="segment")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "kind": "category", **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/modules", params=params).json()
        seen += [m["name"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"cat-{i}" for i in range(5)]
    birds = api.get("/v1/modules", params={"category": "bird"}).json()
    assert [m["name"] for m in birds["items"]] == ["cat-1", "cat-3"] and birds["next_cursor"] is None
    assert [m["name"] for m in api.get("/v1/modules", params={"kind": "task"}).json()["items"]] == ["seg"]


def test_oversize_upload_is_413(backend_settings, artifacts) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import ADMIN_TOKEN

    backend_settings.max_upload_bytes = 1000
    with TestClient(create_app(backend_settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        make_module(api)
        resp = upload(api, "bird-f", artifacts["torchscript"], "torchscript")
        assert resp.status_code == 413 and "GRAFT_MAX_UPLOAD_BYTES" in resp.json()["detail"]
        assert not list((backend_settings.data_dir / "incoming").iterdir())


def test_torch_export_with_pickled_payload_refused(api, artifacts) -> None:
    """A torch_export archive whose weights config asks for a pickled payload never reaches torch.load."""
    make_module(api)
    src = zipfile.ZipFile(io.BytesIO(artifacts["torch_export"]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            dst.writestr(info.filename, data)
    resp = upload(api, "bird-f", out.getvalue())
    assert resp.status_code == 415, resp.text
