"""AutoBudget: what an auto transplant may spend and where, built from the request's `budget` dict."""

from __future__ import annotations

import dataclasses

SPACE_KEYS = ("depths", "widths", "kernels", "skips")
SAMPLINGS = ("uniform", "sandwich", "depth")
SELECTIONS = ("race", "halving")


@dataclasses.dataclass
class AutoBudget:
    """How much an auto transplant may spend; built from the request's `budget` dict."""

    steps: int | None = None
    """Total optimiser steps, super-network + race + fine-tune (None: what `train` would run for one
    adapter), so that auto and one fixed adapter train for the same number of steps."""
    supernet_fraction: float = 0.2
    """Share of `steps` spent on the super-network; the rest races and fine-tunes the chosen child.
    How the defaults were chosen: docs/search.md."""
    max_candidates: int = 32
    """Children scored in the search; the space is searched exhaustively when it is no larger."""
    depths: tuple = (1, 2, 3)
    widths: tuple = (16, 32, 64)
    kernels: tuple = (1, 3)
    skips: tuple = (False, True)
    sampling: str = "sandwich"
    """Super-net children per step: "sandwich" (the largest child plus a uniform one, losses summed,
    one optimiser step; Yu et al., BigNAS), "depth" (depth first, then the rest; favours the
    single-layer children) or "uniform" (one child, uniform over the children). "sandwich" costs more
    CPU than "depth": it picks deeper children, and each super-net step runs two."""
    finalists: int = 4
    """Starting points (best children by inherited loss, warm starts ranked alike) that each get a
    short trial fine-tune before one is kept by held-out loss; 1 = fine-tune the best one only.
    Inherited losses compare children trained for unequal step counts; a few own steps each correct
    much of that bias for a small share of the budget."""
    trial_fraction: float = 0.3
    """Share of the post-super-net steps spent on the finalists' trials (split evenly among them)."""
    selection: str = "halving"
    """How the finalists are cut to one: "race" (one round, the lowest held-out loss after the same
    few steps each) or "halving" (successive halving: rounds of equal step totals, the better half by
    held-out loss goes on and continues training where it stopped)."""
    stratify: bool = True
    """Pick the finalists round-robin over depths (best inherited loss within each depth first)
    instead of the best overall, so that children the super-net trained less get into the race."""
    lift_warm_starts: bool = True
    """Grow each warm start into the best-ranked child that can hold it exactly (same function at
    step 0, more capacity: search/lift.py) before the race, instead of racing its own architecture."""
    out_shape: tuple | None = None
    """The task module's input shape when it differs from the features' (default: the same)."""

    @classmethod
    def from_dict(cls, budget: dict | None) -> AutoBudget:
        """Validated budget; unknown keys are refused, not ignored."""
        budget = dict(budget or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(budget) - names
        if unknown:
            raise ValueError(f"unknown budget keys {sorted(unknown)}; use {sorted(names)}")
        for k in (*SPACE_KEYS, "out_shape"):
            if budget.get(k) is not None:
                budget[k] = tuple(budget[k])
        b = cls(**budget)
        if not 0.0 < b.supernet_fraction < 1.0 or b.max_candidates < 1:
            raise ValueError("supernet_fraction must be in (0, 1) and max_candidates ≥ 1")
        if b.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {b.sampling!r}; use one of {SAMPLINGS}")
        if b.finalists < 1 or not 0.0 < b.trial_fraction < 1.0:
            raise ValueError("finalists must be ≥ 1 and trial_fraction in (0, 1)")
        if b.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {b.selection!r}; use one of {SELECTIONS}")
        if not isinstance(b.stratify, bool):
            raise ValueError("stratify must be true or false")
        if not isinstance(b.lift_warm_starts, bool):
            raise ValueError("lift_warm_starts must be true or false")
        return b
