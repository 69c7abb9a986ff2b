"""Modules loaded once per process and batches formed across compositions at their shared task module."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.compositions.conftest import local_forward, npy
from transplant.adapters import build_adapter, fit_adapter_config, save_adapter


def _wait_until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _compose(served, f: str, h: str | None, g: str) -> dict:
    resp = served.post("/v1/compositions", json={"category_module": f, "adapter": h, "task_module": g})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


@pytest.fixture(scope="module")
def second_adapter(served) -> str:
    """Another bird adapter (different weights, so a different artifact) into the generic module."""
    cfg = fit_adapter_config((4, 6, 6), (4, 6, 6), layers=2)
    torch.manual_seed(11)
    h = build_adapter(cfg)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    data, spec = save_adapter(h, cfg)
    name = "bird-classify-h2"
    assert served.post("/v1/modules", json={"name": name, "kind": "adapter", "category": "bird",
                                             "task": "classify"}).status_code == 201
    resp = served.post(f"/v1/modules/{name}/versions",
                       files={"file": ("a.bin", data, "application/octet-stream")},
                       data={"meta": json.dumps({"format": "safetensors", "input_shape": [None, 4, 6, 6],
                                                 "arch": spec})})
    assert resp.status_code == 201, resp.text
    return f"{name}@1"


def _predict(served, cid: str, x: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "json":
        resp = served.post(f"/v1/compositions/{cid}/predict", json={"inputs": x.tolist()})
        assert resp.status_code == 200, resp.text
        return np.asarray(resp.json()["outputs"], np.float32)
    resp = served.post(f"/v1/compositions/{cid}/predict", content=npy(x),
                       headers={"Content-Type": "application/x-npy"})
    assert resp.status_code == 200, resp.text
    return np.load(io.BytesIO(resp.content), allow_pickle=False)


def test_a_composition_over_loaded_f_and_g_loads_its_adapter_alone(served, second_adapter) -> None:
    x = np.zeros((1, 3, 6, 6), np.float32)
    first = _compose(served, "bird-f@1", "bird-classify-h@1", "classify-generic@1")
    _predict(served, first["id"], x, "npy")  # f, h and g loaded
    before = served.get("/v1/serving").json()["cache"]
    other = _compose(served, "bird-f@1", second_adapter, "classify-generic@1")
    _predict(served, other["id"], x, "npy")
    after = served.get("/v1/serving").json()["cache"]
    assert after["misses"] - before["misses"] == 1  # the new adapter, nothing else
    assert after["entries"] - before["entries"] == 1


@pytest.mark.parametrize("encoding", ["json", "npy"])
def test_compositions_batched_together_at_their_task_module_equal_serving_alone(
    served, second_adapter, tmp_path: Path, encoding,
) -> None:
    mixed = [  # two categories (f exported and TorchScript), three adapters (two share bytes), one g
        _compose(served, "bird-f@1", "bird-classify-h@1", "classify-generic@1"),
        _compose(served, "bird-f@1", second_adapter, "classify-generic@1"),
        _compose(served, "owl-f@1", "owl-classify-h@1", "classify-generic@1"),
        _compose(served, "bird-f@1", None, "bird-classify-teacher@1"),  # another task module: its own group
    ]
    rng = np.random.default_rng(27)
    jobs = [(c, rng.standard_normal((1 + i % 2, 3, 6, 6)).astype(np.float32))
            for i, c in enumerate(mixed * 3)]
    want = [local_forward(served, c, x, tmp_path) for c, x in jobs]
    for c, x in jobs[:4]:  # every piece loaded
        _predict(served, c["id"], x, encoding)
    ex = served.app.state.serving.executor
    _wait_until(lambda: ex._probing() is None)
    for key in ex.groups():  # the learned cap may not stop the batch below: pretend large batches pay
        for _ in range(3):
            ex.curve(key).record(32, 1e-9)
    before, requests0 = ex.totals["batches"], ex.totals["requests"]
    got: list[np.ndarray | None] = [None] * len(jobs)

    def call(i: int) -> None:
        got[i] = _predict(served, jobs[i][0]["id"], jobs[i][1], encoding)

    with ex.run_lock:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        # All 12 submitted: at most one taken (waiting for the lock), the rest queued in two groups.
        _wait_until(lambda: ex.queued() + ex.totals["requests"] - requests0 == len(jobs))
    for t in threads:
        t.join(30)
    for (c, _), g, w in zip(jobs, got, want, strict=True):
        assert g is not None and g.shape == w.shape and np.abs(g - w).max() <= 1e-5, c["id"]
    # 9 requests (12 rows, max_batch 16) of three compositions over the generic task module and 3
    # over the teacher's: at most one lone batch, then one batch per task module.
    assert ex.totals["batches"] - before <= 3
