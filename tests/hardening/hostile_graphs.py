"""Hostile torch_export archives, built by exporting a harmless module and editing its graph JSON.

`torch.export` cannot trace `aten.from_file` (no fake kernel), so an attacker writes the node by hand:
the archive format lets any node name any operator, and `torch.export.load` resolves it. Each builder
returns archive bytes that, loaded with plain `torch.export.load(...).module()` and run, do the harm
(the tests show that too, so they fail if the check is removed).
"""

from __future__ import annotations

import io
import json
import zipfile

import torch
from torch import nn

from transplant.artifacts import save_module

WIDTH = 16


class _PlusZeros(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 16) → (B, 16)
        return x + torch.zeros(WIDTH)


def _edit_model(data: bytes, edit) -> bytes:  # noqa: ANN001
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if "/models/" in info.filename and info.filename.endswith(".json"):
                model = json.loads(raw)
                edit(model)
                raw = json.dumps(model).encode()
            dst.writestr(info.filename, raw)
    return out.getvalue()


def from_file_graph(path: str, *, shared: bool) -> bytes:
    """A graph whose `torch.zeros(16)` is `torch.from_file(path, shared, 16)`: reads, or creates and maps."""

    def edit(model: dict) -> None:
        node = model["graph_module"]["graph"]["nodes"][0]
        assert node["target"] == "torch.ops.aten.zeros.default"
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [
            {"name": "filename", "arg": {"as_string": path}, "kind": 1},
            {"name": "shared", "arg": {"as_bool": shared}, "kind": 1},
            {"name": "size", "arg": {"as_int": WIDTH}, "kind": 1},
        ]

    return _edit_model(save_module(_PlusZeros().eval(), torch.zeros(2, WIDTH), "torch_export"), edit)


def renamed_operator_graph(target: str) -> bytes:
    """The harmless graph with its first node's operator renamed to `target` (arguments unchanged)."""

    def edit(model: dict) -> None:
        model["graph_module"]["graph"]["nodes"][0]["target"] = target

    return _edit_model(save_module(_PlusZeros().eval(), torch.zeros(2, WIDTH), "torch_export"), edit)


def sympify_graph(marker: str) -> bytes:
    """A graph whose symbolic batch size is Python that creates `marker`: `torch.export.load` evals it."""
    return expression_graph(f"__import__('os').system('touch {marker}')")


def expression_graph(code: str) -> bytes:
    """A graph whose first symbolic dimension is the expression `code` (sympified on load)."""

    def edit(model: dict) -> None:
        values = model["graph_module"]["graph"]["tensor_values"]
        for meta in values.values():
            for dim in meta["sizes"]:
                if "as_expr" in dim:
                    dim["as_expr"]["expr_str"] = code
                    return
        raise AssertionError("no symbolic dimension to edit")

    return _edit_model(save_module(nn.Linear(WIDTH, 2).eval(), torch.zeros(2, WIDTH), "torch_export"), edit)


class Printer(nn.Module):
    """Prints on every call: `aten._print`, an effectful operator torch.export keeps in the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.ops.aten._print("printed from an uploaded graph")
        return x + 1


class InputLoop(nn.Module):
    """Loops as many times as its input says: `higher_order.while_loop`, the endless-loop attack."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def cond_fn(i: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return i < s.sum().abs().long() + 1

        def body_fn(i: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return i + 1, s.clone()

        _, s = torch._higher_order_ops.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.long), x))
        return s * 2


class Branch(nn.Module):
    """Branches on its input (`higher_order.cond`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda x: x + 1, lambda x: x - 1, (x,))


def exported(module: nn.Module) -> bytes:
    """torch.export archive bytes of `module` on a (2, 16) input, exported strictly as is (no check)."""
    buf = io.BytesIO()
    torch.export.save(torch.export.export(module.eval(), (torch.zeros(2, WIDTH),)), buf)
    return buf.getvalue()
