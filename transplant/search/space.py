"""The adapter search space: depth × width × kernel × skip, each child an ordinary AdapterConfig."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from transplant.adapters import AdapterConfig, fit_adapter_config
from transplant.errors import ShapeMismatch


@dataclass(frozen=True, order=True)
class Candidate:
    """One child of the super-network (hashable, canonical: depth 1 has no width and no skip)."""

    layers: int
    """Conv / linear layers (1–3)."""
    hidden: int
    """Width of the hidden layers; 0 when layers == 1."""
    kernel_size: int
    """Conv kernel (1 or 3); always 1 for MLP adapters."""
    skip: bool
    """Identity shortcut around the stack (only when in and out shapes agree and layers > 1)."""


@dataclass
class SearchSpace:
    """Choices for the children of one (in_shape → out_shape) super-network."""

    arch: str
    """"conv" (feature maps) or "mlp" (vectors / flattened), as fit_adapter_config picks."""
    in_shape: tuple
    out_shape: tuple
    depths: tuple = (1, 2, 3)
    """Numbers of layers a child may have."""
    widths: tuple = (16, 32, 64)
    """Hidden widths a child may have (sliced from the widest)."""
    kernels: tuple = (1, 3)
    """Conv kernel sizes (the 1×1 is the centre of the 3×3); ignored for MLP adapters."""
    skips: tuple = (False, True)
    """Shortcut choices; True is dropped when the shapes differ."""
    activation: str = "relu"

    def __post_init__(self) -> None:
        self.in_shape = tuple(int(s) for s in self.in_shape)
        self.out_shape = tuple(int(s) for s in self.out_shape)
        if self.arch != "conv":
            self.kernels = (1,)
        if any(k % 2 != 1 for k in self.kernels) or not self.depths or not self.widths:
            raise ValueError("kernels must be odd; depths and widths non-empty")
        if not self.can_skip:
            self.skips = (False,)
        self.depths, self.widths = tuple(sorted(set(self.depths))), tuple(sorted(set(self.widths)))
        self.kernels, self.skips = tuple(sorted(set(self.kernels))), tuple(sorted(set(self.skips)))
        if self.depths[0] < 1:
            raise ValueError("depths start at 1")

    @classmethod
    def for_shapes(cls, in_shape: tuple, out_shape: tuple, **choices) -> SearchSpace:
        """The space for these shapes, in the arch fit_adapter_config picks (ShapeMismatch if none)."""
        base = fit_adapter_config(in_shape, out_shape)
        return cls(arch=base.arch, in_shape=base.in_shape, out_shape=base.out_shape, **choices)

    @property
    def can_skip(self) -> bool:
        if self.arch == "conv":
            return self.in_shape[0] == self.out_shape[0]
        return math.prod(self.in_shape) == math.prod(self.out_shape)

    @property
    def max_kernel(self) -> int:
        return max(self.kernels)

    @property
    def max_width(self) -> int:
        return max(self.widths)

    def canonical(self, layers: int, hidden: int, kernel_size: int, skip: bool) -> Candidate:
        if layers == 1:
            return Candidate(1, 0, kernel_size, False)
        return Candidate(layers, hidden, kernel_size, skip and self.can_skip)

    def candidates(self) -> list[Candidate]:
        """Every distinct child that fits (MLP children over the weight cap are left out)."""
        seen: dict[Candidate, None] = {}
        for d, w, k, s in itertools.product(self.depths, self.widths, self.kernels, self.skips):
            c = self.canonical(d, w, k, s)
            if c not in seen and self._fits(c):
                seen[c] = None
        return list(seen)

    def _fits(self, c: Candidate) -> bool:
        try:
            self.config(c)
        except ShapeMismatch:
            return False
        return True

    def sample(self, gen: torch.Generator, mode: str = "uniform") -> Candidate:
        """A random child for one super-net step.

        "uniform" (default): uniform over candidates(), so every child is trained equally often
        (Guo et al.'s uniform single-path sampling). "depth": depth first, then the other choices —
        each depth equally often, which gave the 2 single-layer children (their own layer) a third
        of all steps and biased the inherited-weight ranking towards them (docs/search.md).
        """

        def pick(options: tuple):
            return options[int(torch.randint(len(options), (1,), generator=gen))]

        if mode == "uniform":
            return pick(self._candidates())
        if mode != "depth":
            raise ValueError(f"unknown sampling {mode!r}; use 'uniform' or 'depth'")
        for _ in range(100):
            c = self.canonical(pick(self.depths), pick(self.widths), pick(self.kernels), pick(self.skips))
            if self._fits(c):
                return c
        return self.candidates()[0]

    def largest(self) -> Candidate:
        """The biggest child: deepest, then widest, largest kernel, with skip (the whole chain)."""
        return max(self._candidates())

    def _candidates(self) -> tuple[Candidate, ...]:
        key = (self.depths, self.widths, self.kernels, self.skips, self.in_shape, self.out_shape)
        cache = getattr(self, "_cand_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, tuple(self.candidates()))
            self._cand_cache = cache
        return cache[1]

    def mutate(self, c: Candidate, gen: torch.Generator) -> Candidate:
        """A neighbour of c: one of depth / width / kernel / skip changed at random."""
        field = int(torch.randint(4, (1,), generator=gen))
        options = (self.depths, self.widths, self.kernels, self.skips)[field]
        value = options[int(torch.randint(len(options), (1,), generator=gen))]
        parts = [c.layers, c.hidden or self.widths[0], c.kernel_size, c.skip]
        parts[field] = value
        return self.canonical(*parts)

    def config(self, c: Candidate) -> AdapterConfig:
        """The standalone AdapterConfig of a child (buildable by build_adapter)."""
        return fit_adapter_config(
            self.in_shape,
            self.out_shape,
            arch=self.arch,
            layers=c.layers,
            hidden=c.hidden or self.widths[0],  # unused by a single layer, but must be a valid width
            kernel_size=c.kernel_size,
            skip=c.skip,
            activation=self.activation,
            shortcut="identity",  # the super-net's children: the stack and its identity skip alone
            normalise=False,
        )
