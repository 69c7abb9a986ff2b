"""Compose f → h → g into one module, check that shapes chain, and export the chain as one file.

Pure PyTorch. Pieces come from `transplant.artifacts.load_module`: modules unlifted from
`torch.export` (which refuse `.train()`/`.eval()`), TorchScript modules, or adapters rebuilt from
safetensors. The composed module never switches its pieces' mode: they are loaded in eval mode.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from transplant.artifacts import TORCH_EXPORT_LOCK
from transplant.errors import ShapeMismatch, TransplantError

EXPORT_FORMATS = ("torch_export", "torchscript", "onnx")
EXPORT_SUFFIXES = {"torch_export": ".pt2", "torchscript": ".pt", "onnx": ".onnx"}

Shape = Sequence[int | None]


class ChainMismatch(ShapeMismatch):
    """Two consecutive pieces of a composition do not fit; `detail` says which and how."""

    def __init__(self, out_shape: Shape, in_shape: Shape, detail: str) -> None:
        super().__init__(_concrete(out_shape), _concrete(in_shape), detail)
        self.detail = detail


class ExportError(TransplantError, ValueError):
    """The composition cannot be written in the requested format; the message says what to ask for."""


class Composed(nn.Module):
    """g(h(f(x))), with h optional (a native teacher pair needs no adapter)."""

    def __init__(self, f: nn.Module, h: nn.Module | None, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.h = h if h is not None else nn.Identity()
        self.g = g
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, *input_shape) → (B, *output_shape)
        return self.g(self.h(self.f(x)))

    def train(self, mode: bool = True) -> Composed:
        # Pieces unlifted from torch.export raise on train()/eval(); they are inference-only anyway,
        # so only this wrapper's flag changes (exporters call train(False) on the root).
        self.training = mode
        return self


def compose(f: nn.Module, h: nn.Module | None, g: nn.Module) -> Composed:
    """The composed module f → h → g (h None: a native pair, f feeds g directly)."""
    return Composed(f, h, g)


def _concrete(shape: Shape) -> tuple:
    return tuple(-1 if d is None else int(d) for d in shape)


def shapes_fit(produced: Shape, expected: Shape) -> bool:
    """Whether a tensor of shape `produced` can be fed where `expected` is wanted (None = any size)."""
    if len(produced) != len(expected):
        return False
    return all(a is None or b is None or int(a) == int(b) for a, b in zip(produced, expected, strict=True))


def format_shape(shape: Shape) -> str:
    """[null, 32, 8, 8], as the API writes shapes."""
    return "[" + ", ".join("null" if d is None else str(d) for d in shape) + "]"


def check_chain(
    f_out: Shape,
    h_in: Shape | None,
    h_out: Shape | None,
    g_in: Shape,
    *,
    labels: tuple[str, str | None, str] = ("category module", "adapter", "task module"),
) -> None:
    """Raise ChainMismatch (a ShapeMismatch) unless f's output feeds h (or g) and h's output feeds g."""
    f_label, h_label, g_label = labels
    if (h_in is None) != (h_out is None):
        raise ValueError("h_in and h_out must both be given, or both be None for a native pair")
    links = [(f_label, f_out, g_label, g_in)]
    if h_in is not None and h_out is not None:
        links = [(f_label, f_out, h_label or "adapter", h_in), (h_label or "adapter", h_out, g_label, g_in)]
    for src, produced, dst, expected in links:
        if not shapes_fit(produced, expected):
            raise ChainMismatch(
                produced,
                expected,
                f"{src} outputs {format_shape(produced)} but {dst} expects {format_shape(expected)}",
            )


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters and buffers (what a loaded composition costs)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _has_torchscript(module: nn.Module) -> bool:
    return any(isinstance(m, torch.jit.ScriptModule) for m in module.modules())


@contextmanager
def _no_input_validation(module: nn.Module) -> Iterator[None]:
    """Switch off the input checks of pieces unlifted from torch.export while tracing.

    Their pre-hook compares input shapes with the program's symbolic ones, which the JIT tracer cannot
    follow ("JIT Tracing of SymInts isn't supported"); the traced graph checks nothing anyway.
    """
    changed = [m for m in module.modules() if getattr(m, "validate_inputs", False) is True]
    for m in changed:
        m.validate_inputs = False
    try:
        yield
    finally:
        for m in changed:
            m.validate_inputs = True


def trace(module: nn.Module, example_input: torch.Tensor) -> torch.jit.ScriptModule:
    """`module` traced to TorchScript on `example_input` (export's input checks switched off meanwhile)."""
    with _no_input_validation(module):
        return torch.jit.trace(module, (example_input,), check_trace=False)


def export_composed(module: nn.Module, example_input: torch.Tensor, format: str) -> bytes:
    """One file of the composed module: `torch_export` (.pt2), `torchscript` (.pt) or `onnx`.

    `example_input` must have a batch of at least 2 so that the batch dimension stays dynamic.
    """
    if format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if example_input.shape[0] < 2:
        raise ValueError("example_input needs a batch of at least 2 (1 would be specialised)")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation chatter is not the caller's concern
        if format == "torch_export":
            if _has_torchscript(module):
                raise ExportError(
                    "a piece of this composition is TorchScript, which torch.export cannot re-export; "
                    "ask for format=torchscript or format=onnx instead"
                )
            batch = torch.export.Dim("batch")
            with TORCH_EXPORT_LOCK:
                program = torch.export.export(module, (example_input,), dynamic_shapes=({0: batch},))
                torch.export.save(program, buf)
        elif format == "torchscript":
            torch.jit.save(trace(module, example_input), buf)
        else:
            # Tracing first lets TorchScript pieces through; the TorchScript-based ONNX exporter
            # needs no extra package (the dynamo one needs onnxscript).
            torch.onnx.export(
                trace(module, example_input),
                (example_input,),
                buf,
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
    return buf.getvalue()
