"""Uploaded bytes are never unpickled: a payload that would touch a file, planted in every accepted slot,
never runs and each upload is a 4xx (export sample inputs: blanked, so inert and accepted); zip bombs
and huge declared shapes are refused before allocation; module names cannot traverse paths or collide
across kinds."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from tests.app.test_modules import conv_net, make_module, upload
from transplant.artifacts import save_module


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_save(obj, *, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _replace_member(archive: bytes, suffix: str, data: bytes, *, add: str | None = None) -> bytes:
    src, out = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, data if info.filename.endswith(suffix) else src.read(info))
        if add is not None:
            prefix = src.infolist()[0].filename.split("/", 1)[0]
            dst.writestr(f"{prefix}/{add}", data)
    return out.getvalue()


def _safetensors_with_header(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.fixture(scope="module")
def export_bytes() -> bytes:
    return save_module(conv_net(), torch.zeros(2, 3, 8, 8), "torch_export")


@pytest.fixture(scope="module")
def script_bytes() -> bytes:
    return save_module(conv_net(), torch.zeros(2, 3, 8, 8), "torchscript")


SLOTS = [
    "torch_save_as_torch_export", "torch_save_as_torchscript", "torch_save_as_safetensors",
    "legacy_pickle_as_torchscript", "export_sample_inputs", "export_weight_payload_pickled",
    "export_extra_member", "export_constant_custom_object", "torchscript_data_pkl",
    "torchscript_constants_pkl", "safetensors_metadata", "safetensors_header_garbage",
]


def _planted(slot: str, payload: Payload, export_bytes: bytes, script_bytes: bytes) -> tuple[bytes, str, dict]:  # noqa: E501
    evil = _torch_save(payload)
    if slot.startswith("torch_save_as_"):
        fmt = slot.removeprefix("torch_save_as_")
        return evil, fmt, {"arch": {"name": "mlp", "dims": [4, 2]}} if fmt == "safetensors" else {}
    if slot == "legacy_pickle_as_torchscript":
        return _torch_save(payload, legacy=True), "torchscript", {}
    if slot == "export_sample_inputs":
        return _replace_member(export_bytes, "sample_inputs/model.pt", evil), "torch_export", {}
    if slot == "export_weight_payload_pickled":
        src = zipfile.ZipFile(io.BytesIO(export_bytes))
        config = json.loads(next(src.read(n) for n in src.namelist() if n.endswith("_weights_config.json")))
        for meta in config["config"].values():
            meta["use_pickle"] = True
        planted = _replace_member(export_bytes, "weights/weight_0", evil)
        planted = _replace_member(planted, "_weights_config.json", json.dumps(config).encode())
        return planted, "torch_export", {}
    if slot == "export_extra_member":
        return _replace_member(export_bytes, "\0never", evil, add="data/payload.pkl"), "torch_export", {}
    if slot == "export_constant_custom_object":
        consts = {"config": {"evil": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": False}}}
        planted = _replace_member(export_bytes, "_constants_config.json", json.dumps(consts).encode())
        return planted, "torch_export", {}
    if slot == "torchscript_data_pkl":
        return _replace_member(script_bytes, "/data.pkl", evil_pickle(payload)), "torchscript", {}
    if slot == "torchscript_constants_pkl":
        return _replace_member(script_bytes, "/constants.pkl", evil_pickle(payload)), "torchscript", {}
    arch = {"name": "mlp", "dims": [4, 2]}
    if slot == "safetensors_metadata":
        body = safetensors_save({"x": torch.zeros(2)}, metadata={"pickle": evil_pickle(payload).hex()})
        return body, "safetensors", {"arch": arch}
    header = {"__metadata__": {"p": evil_pickle(payload).decode("latin1")}, "w": {"dtype": "F32"}}
    return _safetensors_with_header(header), "safetensors", {"arch": arch}


def evil_pickle(payload: Payload) -> bytes:
    import pickle

    return pickle.dumps(payload, protocol=2)


@pytest.mark.parametrize("slot", SLOTS)
def test_planted_pickle_never_runs(embedded_client, tmp_path, export_bytes, script_bytes, slot: str) -> None:
    marker = tmp_path / "pwned"
    data, fmt, meta = _planted(slot, Payload(marker), export_bytes, script_bytes)
    make_module(embedded_client)
    resp = upload(embedded_client, "bird-f", data, fmt, **meta)
    assert not marker.exists(), f"the payload in {slot} ran"
    if slot == "export_sample_inputs":
        # Inert rather than refused: the loader blanks sample inputs before torch.export.load sees them
        # (tests/transplant/test_artifacts.py pins that such an archive loads).
        assert resp.status_code == 201, resp.text
        return
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["detail"]
    assert embedded_client.get("/v1/modules/bird-f").json()["versions"] == []


def _post_dataset(client, data: bytes):
    return client.post(
        "/v1/datasets", files={"file": ("d.npz", data)}, data={"meta": json.dumps({"name": "birds"})}
    )


def test_dataset_object_array_never_unpickled(embedded_client, tmp_path) -> None:
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.savez(buf, x=np.array([[Payload(marker)]], dtype=object))
    resp = _post_dataset(embedded_client, buf.getvalue())
    assert resp.status_code == 422 and "pickle" in resp.json()["detail"], resp.text
    assert not marker.exists()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_dataset_zip_bomb_and_huge_declared_shape_refused(embedded_client) -> None:
    bomb = io.BytesIO()  # 200 MB of zeros behind a small header, deflated to ~200 kB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header((50_000, 1000)))
            chunk = bytes(1 << 20)
            for _ in range(200):
                fh.write(chunk)
    resp = _post_dataset(embedded_client, bomb.getvalue())
    assert resp.status_code == 422 and "zip bomb" in resp.json()["detail"], resp.text

    huge = io.BytesIO()  # declares 4 TB of float32 and holds 8 bytes
    with zipfile.ZipFile(huge, "w") as zf:
        zf.writestr("x.npy", _npy_header((10**6, 10**6)) + bytes(8))
    resp = _post_dataset(embedded_client, huge.getvalue())
    assert resp.status_code == 422 and "declares shape" in resp.json()["detail"], resp.text


def test_module_zip_bomb_refused(embedded_client, export_bytes) -> None:
    bomb = io.BytesIO()
    src = zipfile.ZipFile(io.BytesIO(export_bytes))
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with dst.open("archive/extra/padding", "w", force_zip64=True) as fh:
            for _ in range(100):
                fh.write(bytes(1 << 20))
    make_module(embedded_client)
    resp = upload(embedded_client, "bird-f", bomb.getvalue())
    assert resp.status_code == 422 and "inflates" in resp.json()["detail"], resp.text


def test_safetensors_huge_declared_shape_refused(embedded_client) -> None:
    header = {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}
    make_module(embedded_client)
    resp = upload(
        embedded_client, "bird-f", _safetensors_with_header(header, bytes(64)), "safetensors",
        arch={"name": "mlp", "dims": [4, 2]}, input_shape=[None, 4],
    )
    assert resp.status_code == 422, resp.text


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "a\\b", "A", "x" * 200, "%2e%2e"])
def test_module_names_cannot_traverse(embedded_client, name: str) -> None:
    resp = embedded_client.post("/v1/modules", json={"name": name, "kind": "category", "category": "b"})
    assert resp.status_code == 422, resp.text


def test_module_names_do_not_collide_across_kinds(embedded_client) -> None:
    make_module(embedded_client, "shared", "category", category="bird")
    for kind, extra in (("task", {"task": "cls"}), ("adapter", {"category": "bird", "task": "cls"})):
        resp = embedded_client.post("/v1/modules", json={"name": "shared", "kind": kind, **extra})
        assert resp.status_code == 409, resp.text
    assert embedded_client.get("/v1/modules/shared").json()["kind"] == "category"


def test_planted_module_is_harmless_when_pushed_as_plain_net(embedded_client) -> None:
    # control: the same helpers accept a clean artifact, so the refusals above are about the payload
    make_module(embedded_client)
    data = save_module(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)).eval(), torch.zeros(2, 3, 8, 8),
                       "torch_export")
    assert upload(embedded_client, "bird-f", data).status_code == 201
