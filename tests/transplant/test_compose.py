"""compose / check_chain / export_composed on tiny nets loaded the way Graft loads artifacts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from transplant.adapters import build_adapter, fit_adapter_config, load_adapter, save_adapter
from transplant.artifacts import load_module, save_module
from transplant.compose import (
    ChainMismatch,
    ExportError,
    check_chain,
    compose,
    export_composed,
    parameter_bytes,
)
from transplant.errors import ShapeMismatch

X = torch.randn(2, 3, 6, 6)


def _as_exported(m: nn.Module, example: torch.Tensor, tmp: Path) -> nn.Module:
    """Round-trip through torch.export, loaded the way Graft loads an uploaded torch_export artifact."""
    path = tmp / f"{id(m)}.pt2"
    path.write_bytes(save_module(m, example, "torch_export"))
    return load_module(path, "torch_export")


def _as_script(m: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(m), buf)
    buf.seek(0)
    return torch.jit.load(buf).eval()


@pytest.fixture
def pieces(nets, tmp_path: Path):
    """(f, h, g) as loaded artifacts: f exported, h a safetensors adapter, g TorchScript or exported."""
    f, _g_t, g_s = nets
    cfg = fit_adapter_config((4, 6, 6), (4, 6, 6), layers=1)
    data, spec = save_adapter(build_adapter(cfg), cfg)
    h = load_adapter(data, spec)
    feats = f(X)
    return f, h, g_s, _as_exported(f, X, tmp_path), _as_exported(g_s, feats, tmp_path), _as_script(g_s)


def test_compose_equals_manual_chain(pieces) -> None:
    f, h, g, f_ep, g_ep, g_ts = pieces
    x = torch.randn(5, 3, 6, 6)
    with torch.inference_mode():
        want = g(h(f(x)))
        for gg in (g_ep, g_ts):
            got = compose(f_ep, h, gg)(x)
            assert torch.allclose(got, want, atol=1e-5)
        native = compose(f_ep, None, g_ep)(x)
        assert torch.allclose(native, g(f(x)), atol=1e-5)


def test_composed_train_leaves_exported_pieces_alone(pieces) -> None:
    _f, h, _g, f_ep, g_ep, _ = pieces
    m = compose(f_ep, h, g_ep)
    assert m.train(False) is m and m.training is False
    assert parameter_bytes(m) == sum(
        t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]
    )
    assert parameter_bytes(m) > parameter_bytes(h) > 0


def test_check_chain_spells_out_the_mismatch() -> None:
    check_chain([None, 4, 6, 6], [None, 4, 6, 6], [None, 8], [None, 8])
    check_chain([None, 4, 6, 6], None, None, [None, 4, 6, 6])
    with pytest.raises(ChainMismatch) as err:
        check_chain(
            [None, 32, 8, 8], [None, 16, 8, 8], [None, 8], [None, 8],
            labels=("category module bird-f@1", "adapter x@2", "task module seg@3"),
        )
    assert err.value.detail == (
        "category module bird-f@1 outputs [null, 32, 8, 8] but adapter x@2 expects [null, 16, 8, 8]"
    )
    assert isinstance(err.value, ShapeMismatch)
    expected = r"adapter outputs \[null, 8\] but task module expects \[null, 9\]"
    with pytest.raises(ChainMismatch, match=expected):
        check_chain([None, 4], [None, 4], [None, 8], [None, 9])
    with pytest.raises(ChainMismatch, match="category module outputs"):
        check_chain([None, 4, 6, 6], None, None, [None, 4, 6])


@pytest.mark.parametrize("fmt", ["torch_export", "torchscript", "onnx"])
def test_exported_file_reloads_and_agrees(pieces, fmt: str) -> None:
    f, h, g, f_ep, g_ep, _ = pieces
    data = export_composed(compose(f_ep, h, g_ep), X, fmt)
    x = torch.randn(7, 3, 6, 6)  # another batch size than the example: the batch stays dynamic
    with torch.inference_mode():
        want = g(h(f(x))).numpy()
    if fmt == "torch_export":
        got = torch.export.load(io.BytesIO(data)).module()(x).detach().numpy()
    elif fmt == "torchscript":
        got = torch.jit.load(io.BytesIO(data))(x).detach().numpy()
    else:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5


def test_torchscript_piece_exports_to_torchscript_and_onnx_only(pieces) -> None:
    _f, h, _g, f_ep, _g_ep, g_ts = pieces
    m = compose(f_ep, h, g_ts)
    with pytest.raises(ExportError, match="format=torchscript or format=onnx"):
        export_composed(m, X, "torch_export")
    x = torch.randn(3, 3, 6, 6)
    data = export_composed(m, X, "onnx")
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        assert np.abs(got - m(x).numpy()).max() <= 1e-5
    with pytest.raises(ExportError, match="unknown export format"):
        export_composed(m, X, "pickle")
