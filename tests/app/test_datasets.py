"""Datasets through the HTTP API on both backends, and `load_arrays` reading them back."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from app.datasets.service import get_dataset, load_arrays


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def post(api, data: bytes, meta: dict | None = None):
    return api.post(
        "/v1/datasets", files={"file": ("d.npz", data)},
        data={"meta": json.dumps(meta or {"name": "birds", "category": "bird"})},
    )


def test_upload_get_list_and_load(api) -> None:
    x = np.random.default_rng(0).normal(size=(10, 3, 8, 8)).astype(np.float64)
    y = np.arange(10)
    data = npz(x=x, y=y)
    resp = post(api, data)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["n"] == 10 and body["input_shape"] == [None, 3, 8, 8] and body["y_shape"] == [None]
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert api.get(f"/v1/datasets/{body['id']}").json()["name"] == "birds"
    assert post(api, npz(x=x[:2]), {"name": "fish"}).status_code == 201
    page = api.get("/v1/datasets", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = api.get("/v1/datasets", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert {page["items"][0]["name"], rest["items"][0]["name"]} == {"birds", "fish"}
    assert api.get("/v1/datasets/does-not-exist").status_code == 404

    state = api.app.state
    with state.sessionmaker() as session:
        lx, ly = load_arrays(state.store, get_dataset(session, body["id"]))
    assert lx.dtype == np.float32 and np.allclose(lx, x) and np.array_equal(ly, y)


@pytest.mark.parametrize("case", ["nan", "not_npz", "mismatched_y", "no_x", "object", "scalar_x", "empty",
                                  "bad_meta", "truncated"])
def test_bad_datasets_are_4xx(api, case: str) -> None:
    x = np.zeros((4, 3), np.float32)
    data, meta = npz(x=x), None
    if case == "nan":
        data = npz(x=np.array([[1.0, np.nan]]))
    elif case == "not_npz":
        data = b"x,y\n1,2\n"
    elif case == "mismatched_y":
        data = npz(x=x, y=np.zeros(3))
    elif case == "no_x":
        data = npz(inputs=x)
    elif case == "object":
        data = npz(x=np.array([{"a": 1}, None], dtype=object))
    elif case == "scalar_x":
        data = npz(x=np.zeros(5))
    elif case == "empty":
        data = b""
    elif case == "bad_meta":
        meta = {"name": "Bad Name!"}
    elif case == "truncated":
        data = data[: len(data) - 40]
    resp = post(api, data, meta)
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["detail"]
    assert api.get("/v1/datasets").json()["items"] == []
