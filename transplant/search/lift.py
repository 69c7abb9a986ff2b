"""Growing a registered adapter into a larger child of the search space without changing its function.

A warm start from the registry brings a head start (its weights already fit features close to the new
ones) but also its own architecture, usually the service's small default. Lifting keeps the head start
and gives it the capacity of a larger child, in the spirit of Net2Net (Chen, Goodfellow & Shlens, ICLR
2016): the larger adapter computes exactly the same function at step 0 and then trains on from there.

For conv / MLP adapters built by transplant.adapters (same arch, shapes, resize, activation, skip):
  kernel   a k×k kernel sits at the centre of the larger kernel, zeros around it;
  width    the first `hidden` channels hold the old ones; the extra channels keep a fresh init on their
           way in and get zero weights on their way out, so they add nothing until they have learned
           something (their outgoing weights do get gradients: their activations are not zero);
  depth    (ReLU only) extra layers are inserted before the last one as the identity on the old
           channels: relu(I · relu(z)) = relu(z), exact because a ReLU's output is never negative.
A single-layer adapter only lifts into a single layer of a larger kernel (a skip or a hidden ReLU
cannot represent an arbitrary linear map exactly).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transplant.adapters import AdapterConfig, build_adapter

SAME = ("arch", "in_shape", "out_shape", "resize", "activation", "shortcut", "normalise")


def can_lift(src: AdapterConfig, dst: AdapterConfig) -> bool:
    """Whether `dst` can hold `src` exactly (see the module docstring); False for identical configs."""
    if src.arch not in ("conv", "mlp") or any(getattr(src, k) != getattr(dst, k) for k in SAME):
        return False
    k_src, k_dst = (src.kernel_size, dst.kernel_size) if src.arch == "conv" else (1, 1)
    if k_dst < k_src or (k_dst - k_src) % 2:
        return False
    if src.layers == 1:
        return dst.layers == 1 and k_dst > k_src
    if dst.layers < src.layers or dst.hidden < src.hidden or _skip(src) != _skip(dst):
        return False
    if dst.layers > src.layers and src.activation != "relu":
        return False
    return (dst.layers, dst.hidden, k_dst) != (src.layers, src.hidden, k_src)


def _skip(cfg: AdapterConfig) -> bool:
    """Whether build_adapter gives this config its shortcut (only when the channels agree)."""
    if cfg.arch == "conv":
        return cfg.skip and cfg.in_shape[0] == cfg.out_shape[0]
    return cfg.skip and math.prod(cfg.in_shape) == math.prod(cfg.out_shape)


def _layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _embed(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[:o, :i] = src at the kernel's centre, zeros around it; dst[:o, i:] = 0 (in place)."""
    o, i = src.shape[:2]
    dst[:o].zero_()
    if src.dim() == 4:
        lo = (dst.shape[-1] - src.shape[-1]) // 2
        hi = lo + src.shape[-1]
        dst[:o, :i, lo:hi, lo:hi] = src
    else:
        dst[:o, :i] = src


@torch.no_grad()
def lift(module: nn.Module, src: AdapterConfig, dst: AdapterConfig, seed: int = 0) -> nn.Module:
    """A new adapter of config `dst` computing what `module` (of config `src`) computes.

    The extra channels' incoming weights are build_adapter's fresh init under `seed`.
    """
    if not can_lift(src, dst):
        raise ValueError(f"cannot lift a {src.layers}-layer, width {src.hidden}, kernel {src.kernel_size} "
                         f"adapter into {dst.layers} layers, width {dst.hidden}, kernel {dst.kernel_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = build_adapter(dst)
    old = _layers(module)
    if len(old) != src.layers:
        raise ValueError(f"the module has {len(old)} layers, its config {src.layers}")
    device = old[0].weight.device
    new = _layers(out.to(device))  # dst.layers of them: out was built from dst
    # Old layers 1..n-1 map to the first new layers, the old last layer to the new last layer, and
    # the new layers in between are the identity on the old hidden channels.
    pairs = list(zip(new[: len(old) - 1], old[:-1], strict=True)) + [(new[-1], old[-1])]
    for dst_layer, src_layer in pairs:
        _embed(dst_layer.weight, src_layer.weight)
        dst_layer.bias[: src_layer.bias.shape[0]] = src_layer.bias
    h = src.hidden
    for layer in new[len(old) - 1 : -1]:
        eye = torch.zeros_like(layer.weight[:h, :h])  # (h, h[, k, k])
        if eye.dim() == 4:
            c = eye.shape[-1] // 2
            eye[:, :, c, c] = torch.eye(h, device=device)
        else:
            eye = torch.eye(h, device=device)
        layer.weight[:h].zero_()
        layer.weight[:h, :h] = eye
        layer.bias[:h] = 0
    return out.train(module.training)
