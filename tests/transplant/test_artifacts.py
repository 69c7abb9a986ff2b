"""Safe loading of artifacts: formats recognised by their layout, pickles refused without unpickling."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

from transplant import artifacts
from transplant.adapters import build_from_spec, fit_adapter_config, save_adapter


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU()).eval()


@pytest.mark.parametrize("fmt", ["torch_export"])  # TorchScript is refused: tests/hardening
def test_save_load_probe_round_trip(tmp_path: Path, fmt: str) -> None:
    model, x = net(), torch.randn(2, 3, 8, 8)
    path = tmp_path / "m"
    path.write_bytes(artifacts.save_module(model, x, fmt))
    assert artifacts.sniff_format(path) == fmt
    loaded = artifacts.load_module(path, fmt)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert artifacts.probe_output_shape(loaded, [None, 3, 8, 8]) == [None, 4, 8, 8]


def test_safetensors_with_arch(tmp_path: Path) -> None:
    config = fit_adapter_config((4, 8, 8), (6, 8, 8))
    adapter = build_from_spec({"arch": config.arch, "config": config.__dict__})
    data, spec = save_adapter(adapter, config)
    path = tmp_path / "a.safetensors"
    path.write_bytes(data)
    loaded = artifacts.load_module(path, "safetensors", spec)
    assert artifacts.probe_output_shape(loaded, [None, 4, 8, 8]) == [None, 6, 8, 8]
    with pytest.raises(artifacts.ArtifactError, match="arch"):
        artifacts.load_module(path, "safetensors", None)
    path.write_bytes(st_save({"unrelated": torch.zeros(2)}))
    with pytest.raises(artifacts.ArtifactError, match="do not fit"):
        artifacts.load_module(path, "safetensors", spec)


class Boom:
    def __reduce__(self):
        return (Path("/tmp/graft-pwned").touch, ())


@pytest.mark.parametrize("how", ["torch_save_module", "torch_save_state_dict", "bare_pickle"])
def test_pickles_refused_without_running_them(tmp_path: Path, how: str) -> None:
    path = tmp_path / "evil.pt"
    buf = io.BytesIO()
    if how == "torch_save_module":
        torch.save(net(), buf)
    elif how == "torch_save_state_dict":
        torch.save({"w": torch.zeros(1), "boom": Boom()}, buf)
    else:
        buf.write(pickle.dumps(Boom(), protocol=4))
    path.write_bytes(buf.getvalue())
    Path("/tmp/graft-pwned").unlink(missing_ok=True)
    for fmt in artifacts.FORMATS:
        with pytest.raises(artifacts.PickledArtifact, match="torch.export.save"):
            artifacts.load_module(path, fmt)
    assert not Path("/tmp/graft-pwned").exists()


def test_export_sample_inputs_are_never_unpickled(tmp_path: Path) -> None:
    """torch.export.load would fall back to weights_only=False on sample inputs; we blank them."""
    import zipfile

    src = tmp_path / "m.pt2"
    src.write_bytes(artifacts.save_module(net(), torch.zeros(2, 3, 8, 8), "torch_export"))
    evil = tmp_path / "evil.pt2"
    payload = io.BytesIO()
    torch.save({"boom": Boom()}, payload)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            data = payload.getvalue() if "/data/sample_inputs/" in info.filename else zin.read(info)
            zout.writestr(info.filename, data)
    Path("/tmp/graft-pwned").unlink(missing_ok=True)
    module = artifacts.load_module(evil, "torch_export")
    assert artifacts.probe_output_shape(module, [None, 3, 8, 8]) == [None, 4, 8, 8]
    assert not Path("/tmp/graft-pwned").exists()


@pytest.mark.parametrize("data", [b"", b"garbage" * 10, b"PK\x03\x04broken"])
def test_unloadable_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "m"
    path.write_bytes(data)
    with pytest.raises(artifacts.ArtifactError):
        artifacts.load_module(path, "torchscript")


def test_probe_errors_are_artifact_errors() -> None:
    with pytest.raises(artifacts.ArtifactError, match="input_shape"):
        artifacts.probe_output_shape(net(), [None, 5, 8, 8])
    assert artifacts.shape_elements([None, 3, 8, 8], batch=2) == 384
