"""AutoBudget: what an auto transplant may spend and where, built from the request's `budget` dict."""

from __future__ import annotations

import dataclasses

SPACE_KEYS = ("depths", "widths", "kernels", "skips")
SAMPLINGS = ("uniform", "sandwich", "depth")
SELECTIONS = ("race", "halving")
GROWTHS = ("off", "width", "max")


@dataclasses.dataclass
class AutoBudget:
    """How much an auto transplant may spend; built from the request's `budget` dict."""

    steps: int | None = None
    """Total optimiser steps, super-network + race + fine-tune (None: what `train` would run for one
    adapter), so that auto and one fixed adapter train for the same number of steps."""
    supernet_fraction: float = 0.2
    """Share of `steps` spent on the super-network; the rest races and fine-tunes the chosen child.
    The defaults (0.2, sandwich sampling, 4 stratified finalists, halving over 0.3 of the rest) were
    chosen over the previous ones (depth-first, 8, 0.5) on 30 dev worlds and reported worlds 0-19;
    bench/results/search.md."""
    max_candidates: int = 32
    """Children scored in the search; the space is searched exhaustively when it is no larger."""
    depths: tuple = (1, 2, 3)
    widths: tuple = (16, 32, 64)
    kernels: tuple = (1, 3)
    skips: tuple = (False, True)
    sampling: str = "sandwich"
    """Super-net children per step: "sandwich" (the largest child plus a uniform one, losses summed,
    one optimiser step; Yu et al., BigNAS), "depth" (depth first, then the rest; favours the
    single-layer children) or "uniform" (one child, uniform over the children). With 4 finalists and
    trial_fraction 0.3, "sandwich" was 1.1 points ahead of "depth" (8, 0.5) on 30 dev worlds, 2.0
    and 0.7 on reported worlds 0-29 (two runs, two machines) and 1.3 on worlds 30-59, at about 1.5-1.8
    times its CPU: it picks deeper children, whose steps cost more, and each super-net step runs two;
    bench/results/search.md, search-run3.md."""
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
    extrapolate: bool = False
    """With "halving": cut by each finalist's held-out loss extrapolated to the end of the budget (a
    power law through its last two round-end losses), not by the loss after equally few steps."""
    size_tolerance: float = 0.0
    """With "halving": finalists whose held-out loss is within this fraction of the best at a cut
    count as tied, and the larger (more parameters) go on first (0: the loss alone decides)."""
    lift_warm_starts: bool = True
    """Grow each warm start into the best-ranked child that can hold it exactly (same function at
    step 0, more capacity: search/lift.py) before the race, instead of racing its own architecture.
    On 30 dev worlds with the predecessor's default adapter offered, auto with the registry ended
    1.77 points below auto without it when warm starts raced as registered, and 0.40 above it
    lifted (bench/results/search-lift-dev.md)."""
    warmup_steps: int = 0
    """The race's and the fine-tune's learning rate rises linearly over this many steps (each finalist's
    own steps; the fine-tune's first ones), since they start from trained weights (0: none). On 30 dev
    worlds 5 and 10 steps ended 0.50 and 0.83 points below none (SE 0.5; bench/search_dev.py, "R6")."""
    keep_optimizer: bool = False
    """The fine-tune continues the winner's optimiser state from the race instead of a fresh Adam (30
    dev worlds: 0.41 points below a fresh one, SE 0.32)."""
    grow: str = "off"
    """Before the fine-tune, lift the kept adapter into a larger child of the space that computes the same
    function (search/lift.py): "width" (the widest child of its depth, kernel and skip that holds it),
    "max" (the largest child that holds it) or "off". The race picks the start; growth gives the
    fine-tune the capacity the best fixed candidates have. If the fine-tune does not lower the held-out
    loss, the kept adapter stays as it was, ungrown. On 30 dev worlds "max" was 0.24 points above "off"
    (SE 0.28) at 3.00 against 2.50 times the median fixed run's CPU, "width" 0.10 (SE 0.18); under the
    adoption rule declared before the run (+0.30) neither became the default (bench/search_dev.py,
    "R8"; bench/results/search-ceiling.md)."""
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
        if not 0.0 <= b.size_tolerance < 1.0:
            raise ValueError("size_tolerance must be in [0, 1)")
        if not isinstance(b.extrapolate, bool):
            raise ValueError("extrapolate must be true or false")
        if not isinstance(b.lift_warm_starts, bool):
            raise ValueError("lift_warm_starts must be true or false")
        if not isinstance(b.warmup_steps, int) or isinstance(b.warmup_steps, bool) or b.warmup_steps < 0:
            raise ValueError("warmup_steps must be an integer ≥ 0")
        if b.grow not in GROWTHS:
            raise ValueError(f"unknown grow {b.grow!r}; use one of {GROWTHS}")
        if not isinstance(b.keep_optimizer, bool):
            raise ValueError("keep_optimizer must be true or false")
        return b
