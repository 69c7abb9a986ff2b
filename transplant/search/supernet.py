"""A one-shot super-network over adapter children, with weight sharing and exact child extraction.

Weight sharing (our choice, documented in the search README): every multi-layer child runs through
the same chain of max-width layers, an input layer (c_in → W), depth−2 middle layers (W → W) and a
head (W → c_out); a child of width w uses the first w channels of each, and a 1×1 child uses the
centre of the 3×3 kernels. Dropping the middle layers (the connections between blocks) gives the
shallower children; single-layer children, whose shapes match none of the shared layers, use a
separate c_in → c_out layer of their own. A child is therefore a sub-path of the super-network, and
extracting it is copying slices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transplant.adapters import build_adapter
from transplant.search.space import Candidate, SearchSpace


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    return F.relu(x) if name == "relu" else F.gelu(x)


class SharedLayer(nn.Module):
    """A conv (or linear) layer at its largest size; forward slices (out, in) channels and the kernel."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, conv: bool) -> None:
        super().__init__()
        self.conv = conv
        self.kernel_size = kernel_size
        ref = nn.Conv2d(c_in, c_out, kernel_size) if conv else nn.Linear(c_in, c_out)  # default init
        self.weight = nn.Parameter(ref.weight.detach().clone())  # (O, I, K, K) or (O, I)
        self.bias = nn.Parameter(ref.bias.detach().clone())  # (O,)

    def sliced(self, c_out: int, c_in: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (c_out, c_in[, k, k]) weight and bias a child of kernel k uses."""
        w = self.weight[:c_out, :c_in]
        if self.conv and k != self.kernel_size:
            lo = (self.kernel_size - k) // 2
            w = w[:, :, lo : lo + k, lo : lo + k]  # centre crop: 1×1 shares the 3×3 centre
        return w, self.bias[:c_out]

    def forward(self, x: torch.Tensor, c_out: int, k: int) -> torch.Tensor:
        w, b = self.sliced(c_out, x.shape[1], k)
        if self.conv:
            return F.conv2d(x, w, b, padding=k // 2)  # (B, c_out, H, W)
        return F.linear(x, w, b)  # (B, c_out)


class SuperNet(nn.Module):
    """All children of a SearchSpace in one module; `active` selects the child forward runs."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        conv = space.arch == "conv"
        if conv:
            self.c_in, self.c_out = space.in_shape[0], space.out_shape[0]
        else:
            self.c_in, self.c_out = math.prod(space.in_shape), math.prod(space.out_shape)
        k, w = space.max_kernel, space.max_width
        deep = max(space.depths) > 1
        self.direct = SharedLayer(self.c_in, self.c_out, k, conv) if 1 in space.depths else None
        self.inp = SharedLayer(self.c_in, w, k, conv) if deep else None
        self.mid = nn.ModuleList(SharedLayer(w, w, k, conv) for _ in range(max(space.depths) - 2))
        self.head = SharedLayer(w, self.c_out, k, conv) if deep else None
        with torch.no_grad():
            if self.direct is not None:
                # Like build_adapter's single layer: the (partial) identity plus a little noise.
                dw = self.direct.weight
                noise = torch.randn_like(dw) * (0.01 / math.sqrt(dw.shape[1]))
                nn.init.dirac_(dw) if conv else nn.init.eye_(dw)
                dw.add_(noise)
                self.direct.bias.zero_()
            if self.head is not None and space.can_skip:
                # A small head keeps the skip children near the identity at the start (build_adapter
                # zero-initialises it; zero would starve the no-skip children of signal).
                self.head.weight.mul_(0.1)
                self.head.bias.zero_()
        self.active: Candidate = space.candidates()[-1]

    def _resize(self, y: torch.Tensor) -> torch.Tensor:
        sp = self.space
        if sp.arch != "conv" or sp.in_shape[1:] == sp.out_shape[1:]:
            return y
        if sp.out_shape[1] < sp.in_shape[1]:
            return F.adaptive_avg_pool2d(y, sp.out_shape[1:])
        return F.interpolate(y, size=sp.out_shape[1:], mode="nearest")

    def forward(self, x: torch.Tensor, child: Candidate | None = None) -> torch.Tensor:
        c = child or self.active
        act = self.space.activation
        z = x if self.space.arch == "conv" else x.flatten(1)  # (B, C, H, W) or (B, N)
        if c.layers == 1:
            y = self.direct(z, self.c_out, c.kernel_size)
        else:
            h = _act(act, self.inp(z, c.hidden, c.kernel_size))  # (B, w, ...)
            for layer in self.mid[: c.layers - 2]:
                h = _act(act, layer(h, c.hidden, c.kernel_size))
            y = self.head(h, self.c_out, c.kernel_size)
            if c.skip:
                y = z + y
        y = self._resize(y)
        return y if self.space.arch == "conv" else y.reshape(x.shape[0], *self.space.out_shape)

    def layers_of(self, c: Candidate) -> list[tuple[SharedLayer, int, int]]:
        """(shared layer, c_out, c_in) for each layer of child c, in order."""
        if c.layers == 1:
            return [(self.direct, self.c_out, self.c_in)]
        chain = [(self.inp, c.hidden, self.c_in)]
        chain += [(m, c.hidden, c.hidden) for m in self.mid[: c.layers - 2]]
        return chain + [(self.head, self.c_out, c.hidden)]

    @torch.no_grad()
    def extract(self, c: Candidate) -> nn.Module:
        """Child c as a standalone adapter (build_adapter(space.config(c))) holding the inherited weights."""
        child = build_adapter(self.space.config(c)).to(self.direct_or_inp_device())
        targets = [m for m in child.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        sources = self.layers_of(c)
        if len(targets) != len(sources):
            raise RuntimeError(f"child {c} has {len(targets)} layers, the super-net path {len(sources)}")
        for dst, (src, c_out, c_in) in zip(targets, sources, strict=True):
            w, b = src.sliced(c_out, c_in, c.kernel_size)
            dst.weight.copy_(w)
            dst.bias.copy_(b)
        return child.eval()

    def direct_or_inp_device(self) -> torch.device:
        return next(self.parameters()).device
