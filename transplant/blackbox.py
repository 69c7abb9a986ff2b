"""Treat uploaded modules (nn.Module, torch.export, TorchScript) as fixed black boxes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

Module = Callable[[torch.Tensor], torch.Tensor]


def _set_eval(m: nn.Module) -> bool:
    """Put m in eval mode; False when the module refuses (torch.export modules do)."""
    try:
        m.eval()
        return True
    except (NotImplementedError, RuntimeError):
        return False


@contextlib.contextmanager
def frozen(*modules: Module, device: torch.device | None = None) -> Iterator[None]:
    """Inside: modules in eval mode (BatchNorm uses running stats), no grads, on `device`; restored after.

    Their weights are never written: only `requires_grad` flags, the train/eval flag and (when a
    device is asked) the placement change, and all three are put back on exit.
    """
    saved = []
    for m in modules:
        if not isinstance(m, nn.Module):
            saved.append(None)
            continue
        params = list(m.parameters())
        flags = [p.requires_grad for p in params]
        was_training = m.training
        dev = params[0].device if params else None
        if device is not None and dev is not None and dev != device:
            m.to(device)
        for p in params:
            p.requires_grad_(False)
        eval_ok = _set_eval(m)
        saved.append((m, params, flags, was_training and eval_ok, dev))
    try:
        yield
    finally:
        for entry in saved:
            if entry is None:
                continue
            m, params, flags, restore_train, dev = entry
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)
            if restore_train:
                m.train()
            if device is not None and dev is not None and dev != device:
                m.to(dev)


@torch.no_grad()
def batched_apply(
    fn: Module, x: torch.Tensor, batch_size: int = 256, device: torch.device | None = None
) -> torch.Tensor:
    """fn over x in batches without gradients; result on `device` (default: x's)."""
    device = device or x.device
    outs = [fn(x[i : i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs).to(device)
