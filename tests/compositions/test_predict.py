"""POST /v1/compositions/{id}/predict: equal to f → h → g computed locally, batched, and guarded."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.compositions.conftest import NATIVE_BIRD, local_forward, npy

EXPLICIT = {
    "category_module": "bird-f@1", "adapter": "bird-classify-h@1", "task_module": "classify-generic@1"
}


@pytest.fixture(scope="module")
def compositions(served) -> dict[str, dict]:
    transplanted = served.post("/v1/compositions", json=EXPLICIT)
    native = served.post("/v1/compositions", json=NATIVE_BIRD)
    assert transplanted.status_code in (200, 201) and native.status_code in (200, 201)
    assert transplanted.json()["adapter"] is not None and native.json()["adapter"] is None
    return {"transplanted": transplanted.json(), "native": native.json()}


def _json_predict(client, cid: str, x: np.ndarray) -> np.ndarray:
    resp = client.post(f"/v1/compositions/{cid}/predict", json={"inputs": x.tolist()})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return np.asarray(resp.json()["outputs"], dtype=np.float32)


def _npy_predict(client, cid: str, x: np.ndarray) -> np.ndarray:
    resp = client.post(f"/v1/compositions/{cid}/predict", content=npy(x),
                       headers={"Content-Type": "application/x-npy"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-npy"
    return np.load(io.BytesIO(resp.content), allow_pickle=False)


@pytest.mark.parametrize("kind", ["transplanted", "native"])
@pytest.mark.parametrize("encoding", ["json", "npy"])
@pytest.mark.parametrize("n", [1, 5])
def test_predict_equals_the_local_chain(served, compositions, tmp_path: Path, kind, encoding, n) -> None:
    comp = compositions[kind]
    x = np.random.default_rng(n).standard_normal((n, 3, 6, 6)).astype(np.float32)
    got = (_json_predict if encoding == "json" else _npy_predict)(served, comp["id"], x)
    want = local_forward(served, comp, x, tmp_path)
    assert got.shape == want.shape == (n, 3)
    assert np.abs(got - want).max() <= 1e-5


def test_concurrent_requests_each_get_their_own_rows(served, compositions, tmp_path: Path) -> None:
    comp = compositions["transplanted"]
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((1 + i % 3, 3, 6, 6)).astype(np.float32) for i in range(24)]
    want = local_forward(served, comp, np.concatenate(batches), tmp_path)
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda x: _npy_predict(served, comp["id"], x), batches))
    assert np.abs(np.concatenate(got) - want).max() <= 1e-5
    stats = served.get("/v1/serving").json()
    assert stats["cache"]["entries"] >= 1 and stats["served"]["inputs"] >= sum(len(b) for b in batches)


def _bad(served, cid: str, *, body=None, content=None, headers=None) -> tuple[int, str]:
    if body is not None:
        resp = served.post(f"/v1/compositions/{cid}/predict", content=json.dumps(body),
                           headers={"Content-Type": "application/json"})
    else:
        resp = served.post(f"/v1/compositions/{cid}/predict", content=content,
                           headers=headers or {"Content-Type": "application/x-npy"})
    return resp.status_code, resp.json()["detail"]


def test_bad_inputs_get_a_clear_4xx(served, compositions) -> None:
    cid = compositions["transplanted"]["id"]
    good = np.zeros((2, 3, 6, 6), np.float32)
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = [
        (dict(body={"inputs": good[0].tolist()}), 422, "wrap it in a list"),
        (dict(body={"inputs": np.zeros((2, 3, 6, 5)).tolist()}), 422, "expects [N, 3, 6, 6]"),
        (dict(content=npy(np.zeros((2, 6, 6, 3), np.float32))), 422, "expects [N, 3, 6, 6]"),
        (dict(body={"inputs": [[["a"] * 6] * 6] * 3}), 422, "strings"),
        (dict(body={"inputs": [[[True] * 6] * 6] * 3}), 422, "booleans"),
        (dict(body={"inputs": [[[None] * 6] * 6] * 3}), 422, "non-numbers"),
        (dict(content=npy(good.astype(np.complex64))), 422, "complex"),
        (dict(content=obj.getvalue()), 422, "Python objects"),
        (dict(body={"inputs": [[[[float("nan")] * 6] * 6] * 3]}), 422, "NaN or infinite"),
        (dict(content=npy(np.full((1, 3, 6, 6), np.inf, np.float32))), 422, "NaN or infinite"),
        (dict(body={"inputs": [[[[1e300] * 6] * 6] * 3]}), 422, "too large for float32"),
        (dict(body={"inputs": []}), 422, "empty"),
        (dict(content=npy(np.zeros((0, 3, 6, 6), np.float32))), 422, "empty"),
        (dict(body={"inputs": [good[0].tolist(), [1.0]]}), 422, "ragged"),
        (dict(body={"x": []}), 422, '"inputs" field'),
        (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
        (dict(content=b"\x93NUMPY garbage"), 400, "not a valid .npy"),
        (dict(content=b""), 400, "empty"),
        (dict(content=b"x", headers={"Content-Type": "text/plain"}), 415, "application/x-npy"),
    ]
    for kwargs, status, words in cases:
        got_status, detail = _bad(served, cid, **kwargs)
        assert (got_status, words in detail) == (status, True), (kwargs.get("body", "npy"), detail)
    assert served.post("/v1/compositions/nope/predict", json={"inputs": [[1]]}).status_code == 404
    # int inputs are numbers too: read as float32
    ints = np.zeros((1, 3, 6, 6), int).tolist()
    assert served.post(f"/v1/compositions/{cid}/predict", json={"inputs": ints}).status_code == 200


@pytest.mark.parametrize("encoding", ["json", "npy"])
def test_any_number_of_inputs_runs_in_forwards_of_the_batch_size(served, compositions, tmp_path: Path,
                                                                   encoding) -> None:
    comp = compositions["transplanted"]
    x = np.random.default_rng(360).standard_normal((360, 3, 6, 6)).astype(np.float32)
    before = served.get("/v1/serving").json()["served"]
    got = (_json_predict if encoding == "json" else _npy_predict)(served, comp["id"], x)
    assert np.abs(got - local_forward(served, comp, x, tmp_path)).max() <= 1e-5
    after = served.get("/v1/serving").json()["served"]
    # GRAFT_PREDICT_MAX_BATCH (16 here) caps a forward pass, not the request: 360 rows, ≥ 23 forwards.
    assert after["inputs"] - before["inputs"] == 360 and after["batches"] - before["batches"] >= 23


def test_a_body_over_the_limit_gets_a_413(served, compositions) -> None:
    cid = compositions["transplanted"]["id"]
    settings = served.app.state.settings
    body = npy(np.zeros((40, 3, 6, 6), np.float32))
    old, settings.predict_max_body_bytes = settings.predict_max_body_bytes, len(body) - 1
    try:
        status, detail = _bad(served, cid, content=body)
        assert status == 413 and f"larger than {len(body) - 1} bytes" in detail
        assert _bad(served, cid, content=body[:-4 * 3 * 36])[0] != 413  # 39 inputs fit
    finally:
        settings.predict_max_body_bytes = old
    op = served.get("/openapi.json").json()["paths"]["/v1/compositions/{composition_id}/predict"]["post"]
    assert "GRAFT_PREDICT_MAX_BODY_BYTES" in op["responses"]["413"]["description"]


def test_predict_needs_write_scope(served, compositions) -> None:
    cid = compositions["native"]["id"]
    resp = served.post(f"/v1/compositions/{cid}/predict", json={"inputs": [[1]]},
                       headers={"Authorization": ""})
    assert resp.status_code == 401
