"""PredictFastPath: a composition served before is answered without FastAPI, exactly as the route does.

Each case runs twice on a fresh app: the first call goes through the FastAPI route (the composition is
not known to that process yet), the second through the fast path; status, body and headers must match.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.ops.metrics import REGISTRY
from app.serving import fastpath
from tests.compositions.conftest import npy
from tests.compositions.test_predict import EXPLICIT
from tests.conftest import ADMIN_TOKEN

GOOD = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)
NPY = {"Content-Type": "application/x-npy"}
CASES = {
    "npy": dict(content=npy(GOOD), headers=NPY),
    "json": dict(content=json.dumps({"inputs": GOOD.tolist()}), headers={"Content-Type": "application/json"}),
    "no token": dict(content=npy(GOOD), headers={**NPY, "Authorization": ""}),
    "bad token": dict(content=npy(GOOD), headers={**NPY, "Authorization": "Bearer not-a-token-at-all"}),
    "wrong shape": dict(content=npy(np.zeros((2, 6, 6, 3), np.float32)), headers=NPY),
    "more inputs than a batch": dict(content=npy(np.zeros((17, 3, 6, 6), np.float32)), headers=NPY),
    "NaN": dict(content=npy(np.full((1, 3, 6, 6), np.nan, np.float32)), headers=NPY),
    "empty body": dict(content=b"", headers=NPY),
    "not JSON": dict(content=b"{not json", headers={"Content-Type": "application/json"}),
    "text/plain": dict(content=b"x", headers={"Content-Type": "text/plain"}),
}


@pytest.fixture(scope="module")
def composition(served) -> str:
    resp = served.post("/v1/compositions", json=EXPLICIT)
    assert resp.status_code in (200, 201)
    return resp.json()["id"]


def _answer(resp) -> tuple:  # noqa: ANN001
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("x-request-id", "date")}
    return resp.status_code, headers, resp.content


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_answers_as_the_route_does(served, composition, case, monkeypatch) -> None:
    calls = []
    real = fastpath.read_body  # the fast path's first step

    async def counted(request):  # noqa: ANN001, ANN202
        calls.append(1)
        return await real(request)

    monkeypatch.setattr(fastpath, "read_body", counted)
    url = f"/v1/compositions/{composition}/predict"
    # A fresh process-like app on the same registry: the composition is not known to it yet.
    with TestClient(create_app(served.app.state.settings),
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        first = client.post(url, **CASES[case])
        assert calls == [], "the first call should have gone through the FastAPI route"
        assert client.post(url, content=npy(GOOD[:1]), headers=NPY).status_code == 200  # now known
        calls.clear()
        second = client.post(url, **CASES[case])
    assert calls == [1], "the second call should have been answered by the fast path"
    assert _answer(second) == _answer(first)
    if case in ("npy", "json", "more inputs than a batch"):
        assert first.status_code == 200
    else:
        assert 400 <= first.status_code < 500 and first.json()["detail"]


def test_fast_path_requests_are_counted_under_the_route(served, composition) -> None:
    url = f"/v1/compositions/{composition}/predict"
    labels = {"route": fastpath.PREDICT_TEMPLATE, "method": "POST", "status": "200"}
    before = REGISTRY.get_sample_value("graft_http_requests_total", labels) or 0.0
    for _ in range(3):
        assert served.post(url, content=npy(GOOD), headers=NPY).status_code == 200
    assert REGISTRY.get_sample_value("graft_http_requests_total", labels) == before + 3


def test_other_requests_pass_through(served, composition) -> None:
    # GET on the predict path, and a path that only looks like it: FastAPI answers as before.
    assert served.get(f"/v1/compositions/{composition}/predict").status_code == 405
    assert served.post(f"/v1/compositions/{composition}/predict/extra", content=b"").status_code == 404
