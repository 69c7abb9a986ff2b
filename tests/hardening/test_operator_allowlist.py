"""An uploaded graph is the payload: every operator it calls must be on the allow-list of pure tensor
operators (transplant/allowlist.py), checked at upload and again on every load, before anything runs.

Each attack is shown to work against plain `torch.export.load` first, so these tests fail without the
check: a graph reading and creating files through `aten.from_file`, a shape expression that
`torch.export.load` evals, `aten._print`, an input-driven `while_loop`, renamed operators, TorchScript.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.app.test_modules import make_module, upload
from tests.hardening import hostile_graphs as hostile
from transplant import allowlist, world
from transplant.adapters import build_adapter, fit_adapter_config
from transplant.artifacts import (
    ArtifactError,
    ForbiddenOperator,
    RefusedArtifact,
    check_program,
    load_module,
    save_module,
)

X = torch.zeros(2, hostile.WIDTH)


def _load(tmp_path: Path, data: bytes, fmt: str = "torch_export") -> nn.Module:
    path = tmp_path / "artifact"
    path.write_bytes(data)
    return load_module(path, fmt)


def _plain_load(data: bytes) -> nn.Module:
    """What Graft did before the check: torch.export's own loader."""
    return torch.export.load(io.BytesIO(data)).module()


def test_from_file_read_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(np.arange(hostile.WIDTH, dtype=np.float32).tobytes())
    data = hostile.from_file_graph(str(secret), shared=False)
    leaked = _plain_load(data)(X)  # the attack, unchecked: the file's bytes come back as the output
    assert leaked[0, :3].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ForbiddenOperator, match=r"aten\.from_file"):
        _load(tmp_path, data)


def test_from_file_write_refused_and_no_file_created(tmp_path: Path) -> None:
    shown, target = tmp_path / "shown.bin", tmp_path / "site-packages-evil.pth"
    _plain_load(hostile.from_file_graph(str(shown), shared=True))(X)
    assert shown.exists()  # unchecked, loading and running it creates (and maps) the file
    with pytest.raises(ForbiddenOperator, match=r"aten\.from_file"):
        _load(tmp_path, hostile.from_file_graph(str(target), shared=True))
    assert not target.exists()


def test_shape_expression_is_never_evaluated(tmp_path: Path) -> None:
    shown, marker = tmp_path / "shown", tmp_path / "pwned"
    with pytest.raises(Exception):  # noqa: B017 - torch fails after sympify has already run the code
        torch.export.load(io.BytesIO(hostile.sympify_graph(str(shown))))
    assert shown.exists()  # torch.export.load evals shape expressions
    with pytest.raises(ArtifactError, match="shape"):
        _load(tmp_path, hostile.sympify_graph(str(marker)))
    assert not marker.exists()


@pytest.mark.parametrize("expr", [
    "9**9**9**9",  # sympy would compute it exactly: minutes of CPU in the loading thread
    "s0**(10**10)",
    "PowByNatural(9, 999999999)",
    "().__class__",
    "Symbol('s0')._sympify",
    "s0 + 1" + "0" * 30,
])
def test_shape_expressions_beyond_plain_arithmetic_refused(tmp_path: Path, expr: str) -> None:
    with pytest.raises(ArtifactError, match="shape expression"):
        _load(tmp_path, hostile.expression_graph(expr))


@pytest.mark.parametrize("module, name", [
    (hostile.Printer(), "aten._print"),
    (hostile.InputLoop(), "higher_order.while_loop"),
    (hostile.Branch(), "higher_order.cond"),
])
def test_exportable_side_effects_and_loops_refused(tmp_path: Path, module: nn.Module, name: str) -> None:
    data = hostile.exported(module)
    assert name in json.dumps(_targets(data))  # torch.export really records it
    with pytest.raises(ForbiddenOperator, match=name.replace(".", r"\.")):
        _load(tmp_path, data)
    # The loaded-program check refuses it on its own too (defence in depth behind the JSON check).
    with pytest.raises(ForbiddenOperator, match=name.replace(".", r"\.")):
        check_program(torch.export.export(module.eval(), (X,)))


def _targets(data: bytes) -> list[str]:
    import zipfile

    zf = zipfile.ZipFile(io.BytesIO(data))
    model = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("models/model.json"))))
    found: list[str] = []
    stack: list = [model]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("target"), str):
                found.append(item["target"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


@pytest.mark.parametrize("target, name", [
    ("torch.ops.aten.from_file.default", "aten.from_file"),
    ("torch.save", "torch.save"),  # torch.export.load resolves any torch.* attribute as a node target
    ("torch.load", "torch.load"),
    ("builtins.open", "builtins.open"),
    ("torch.ops.profiler._record_function_enter.default", "profiler._record_function_enter"),
    ("torch.ops.c10d_functional.all_reduce.default", "c10d_functional.all_reduce"),
    ("torch.ops.aten.as_strided.default", "aten.as_strided"),
    ("torch.ops.mylib.custom_op.default", "mylib.custom_op"),
    ("#extension:op", "#extension:op"),
])
def test_hand_edited_operator_refused(tmp_path: Path, target: str, name: str) -> None:
    with pytest.raises(ForbiddenOperator, match=name.replace(".", r"\.")):
        _load(tmp_path, hostile.renamed_operator_graph(target))


def test_torchscript_refused_with_how_to(tmp_path: Path) -> None:
    data = save_module(nn.Linear(4, 2), torch.zeros(1, 4), "torchscript")
    with pytest.raises(RefusedArtifact, match=r"torch\.export\.save\(torch\.export\.export"):
        _load(tmp_path, data, "torchscript")
    with pytest.raises(RefusedArtifact, match="TorchScript"):  # declared as another format: still refused
        _load(tmp_path, data, "torch_export")


class _TextNet(nn.Module):
    """Embedding, two transformer encoder layers (pre- and post-norm), a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, activation="gelu", norm_first=True)
        self.enc2 = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 16) token ids as floats → (B, 5)
        return self.head(self.enc2(self.enc(self.emb(x.long().clamp(0, 99)))).mean(1))


def _real_networks() -> list[tuple[str, nn.Module, torch.Tensor]]:
    nets = [
        ("world-category", world.category_module(3, 2), torch.randn(2, 3, 16, 16)),
        ("world-task", world.task_module("classify", 5, 2, False), torch.randn(2, 16, 8, 8)),
        ("adapter-conv", build_adapter(fit_adapter_config((16, 8, 8), (24, 4, 4), activation="gelu")),
         torch.randn(2, 16, 8, 8)),
        ("adapter-mlp", build_adapter(fit_adapter_config((16, 8, 8), (32,))), torch.randn(2, 16, 8, 8)),
        ("transformer", _TextNet(), torch.randint(0, 100, (2, 16)).float()),
    ]
    return nets


@pytest.mark.parametrize("decomposed", [False, True])
def test_real_networks_pass(tmp_path: Path, decomposed: bool) -> None:
    for label, net, x in _real_networks():
        net = net.eval()
        program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        if decomposed:
            program = program.run_decompositions()
        buf = io.BytesIO()
        torch.export.save(program, buf)
        loaded = _load(tmp_path, buf.getvalue())
        with torch.inference_mode():
            assert torch.allclose(loaded(x), net(x), atol=1e-5), label


def test_efficientnet_lite_pieces_pass(tmp_path: Path) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    from transplant.realworld import CUTS, split_lite

    net = EfficientNet.from_name("efficientnet-lite0").eval()
    f, g = split_lite(net, CUTS[112][0])
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = f(x)
    for piece, inp in ((f, x), (g, feats)):
        loaded = _load(tmp_path, save_module(piece, inp, "torch_export"))
        with torch.inference_mode():
            assert torch.allclose(loaded(inp), piece(inp), atol=1e-4)


def test_allowlist_names() -> None:
    assert allowlist.is_allowed("aten.conv2d") and allowlist.is_allowed("aten.relu_")
    assert allowlist.serialized_name("torch.ops.aten.conv2d.default") == "aten.conv2d"
    assert allowlist.target_name(torch.ops.aten.conv2d.default) == "aten.conv2d"
    for name in ("aten.from_file", "aten._print", "higher_order.while_loop", "aten.set_", "aten.__dunder__"):
        assert not allowlist.is_allowed(name), name


# --- through the API: refused at upload with a 422 naming the operator, and again on every load ---

def test_upload_of_from_file_graph_refused(embedded_client, tmp_path: Path) -> None:
    target = tmp_path / "evil.pth"
    make_module(embedded_client)
    resp = upload(embedded_client, "bird-f", hostile.from_file_graph(str(target), shared=True),
                  input_shape=[None, hostile.WIDTH])
    assert resp.status_code == 422 and "aten.from_file" in resp.json()["detail"], resp.text
    assert not target.exists()
    assert embedded_client.get("/v1/modules/bird-f").json()["versions"] == []


def test_upload_of_torchscript_refused(embedded_client) -> None:
    make_module(embedded_client)
    resp = upload(embedded_client, "bird-f", save_module(nn.Linear(4, 2), torch.zeros(1, 4), "torchscript"),
                  "torchscript", input_shape=[None, 4])
    assert resp.status_code == 422, resp.text
    assert 'torch.export.save(torch.export.export(model, (example,)), "m.pt2")' in resp.json()["detail"]


def test_stored_artifact_checked_again_on_predict(embedded_client, embedded_settings, tmp_path: Path) -> None:
    """Stored bytes can change: predict refuses a graph that was edited in the store after upload."""
    api = embedded_client
    make_module(api, "bird-f", "category", category="bird")
    make_module(api, "bird-head", "task", task="classify")
    ok = upload(api, "bird-f", hostile.exported(nn.Identity()), input_shape=[None, hostile.WIDTH])
    assert ok.status_code == 201, ok.text
    head = save_module(nn.Linear(hostile.WIDTH, 3).eval(), X, "torch_export")
    assert upload(api, "bird-head", head, input_shape=[None, hostile.WIDTH],
                  trained_on=["bird"]).status_code == 201
    target = tmp_path / "planted.bin"
    stored = next(p for p in Path(embedded_settings.data_dir).rglob(ok.json()["sha256"]) if p.is_file())
    stored.chmod(0o644)
    stored.write_bytes(hostile.from_file_graph(str(target), shared=True))
    comp = api.post("/v1/compositions", json={"category": "bird", "task": "classify"})
    assert comp.status_code in (200, 201), comp.text
    x = np.zeros((1, hostile.WIDTH), dtype=np.float32)
    resp = api.post(f"/v1/compositions/{comp.json()['id']}/predict", json={"inputs": x.tolist()})
    assert resp.status_code == 422 and "aten.from_file" in resp.json()["detail"], resp.text
    assert not target.exists()
