"""Export a module to a file the server accepts (never a pickle): torch_export.

TorchScript is not offered: the server refuses it (its graphs cannot be checked against the operator
allow-list as strictly as torch.export's).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

EXPORT_FORMATS = ("torch_export",)


def shape_of(example_input: torch.Tensor) -> list[int | None]:
    """The API's input_shape for an example batch: the batch dimension becomes null."""
    return [None, *(int(d) for d in example_input.shape[1:])]


def export_module(module: nn.Module, example_input: torch.Tensor, format: str, path: Path) -> None:
    """Write `module` (eval mode) to `path` in `format`, with a dynamic batch dimension."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format {format!r} cannot be exported by the client; use one of {EXPORT_FORMATS}")
    module = module.eval()
    if example_input.dim() == 0:
        raise ValueError("example_input needs a batch dimension first, e.g. x[:2] of shape (2, C, H, W)")
    # A batch of 1 would be specialised away by torch.export; two copies keep the dimension symbolic.
    example = example_input if example_input.shape[0] > 1 else example_input.repeat(
        2, *([1] * (example_input.dim() - 1))
    )
    with torch.no_grad():
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
