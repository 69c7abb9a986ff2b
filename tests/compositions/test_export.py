"""GET /v1/compositions/{id}/export: one file of f → h → g that reloads outside Graft and agrees."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.compositions.conftest import NATIVE_BIRD, local_forward


@pytest.fixture(scope="module")
def comps(served) -> dict[str, dict]:
    # native: bird-f (torch_export) → teacher head (torch_export); transplanted: bird-f → h
    # (safetensors) → generic head (TorchScript), which torch.export cannot re-export.
    native = served.post("/v1/compositions", json=NATIVE_BIRD).json()
    transplanted = served.post("/v1/compositions", json={
        "category_module": "bird-f@1", "adapter": "bird-classify-h@1", "task_module": "classify-generic@1",
    }).json()
    return {"native": native, "transplanted": transplanted}


def _run(data: bytes, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]
    t = torch.from_numpy(x)
    module = torch.export.load(io.BytesIO(data)).module() if fmt == "torch_export" else torch.jit.load(
        io.BytesIO(data))
    with torch.inference_mode():
        return module(t).numpy()


@pytest.mark.parametrize(("kind", "fmt"), [
    ("native", "torch_export"), ("native", "onnx"), ("transplanted", "torchscript"), ("transplanted", "onnx"),
    ("transplanted", "torch_export"),
])
def test_export_reloads_and_agrees(served, comps, tmp_path: Path, kind: str, fmt: str) -> None:
    comp = comps[kind]
    resp = served.get(f"/v1/compositions/{comp['id']}/export", params={"format": fmt})
    assert resp.status_code == 200, resp.text
    suffix = {"torch_export": ".pt2", "torchscript": ".pt", "onnx": ".onnx"}[fmt]
    disposition = resp.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=") and disposition.endswith(f'{suffix}"')
    x = np.random.default_rng(0).standard_normal((5, 3, 6, 6)).astype(np.float32)
    got = _run(resp.content, fmt, x)
    want = local_forward(served, comp, x, tmp_path)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5


def test_export_refusals_say_what_to_do(served, comps) -> None:
    cid = comps["transplanted"]["id"]
    resp = served.get(f"/v1/compositions/{cid}/export", params={"format": "pickle"})
    assert resp.status_code == 400 and "torch_export, torchscript, onnx" in resp.json()["detail"]
    assert served.get("/v1/compositions/nope/export", params={"format": "onnx"}).status_code == 404
