"""The building blocks run_auto_transplant chains: super-net training, scoring, resumable training."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from transplant.adapters import config_from_spec
from transplant.blackbox import batched_apply
from transplant.distill.losses import back_distillation_loss
from transplant.distill.trainer import TrainConfig, Trainer
from transplant.errors import Cancelled, TrainingDiverged
from transplant.run import _objective, _split
from transplant.search.budget import SPACE_KEYS, AutoBudget
from transplant.search.lift import can_lift, lift
from transplant.search.space import Candidate, SearchSpace
from transplant.search.supernet import SuperNet

Module = Callable[[torch.Tensor], torch.Tensor]


class Staged:
    """Forwards trainer events to the user's callbacks with a stage and an overall step."""

    def __init__(self, callbacks: Sequence[Any], stage: str, offset: int, total: int, **extra: Any) -> None:
        self.callbacks, self.stage, self.offset, self.total = list(callbacks), stage, offset, total
        self.extra = extra

    def _send(self, name: str, info: dict) -> None:
        info = {**info, **self.extra, "stage": self.stage, "stage_step": info.get("step"),
                "total_steps": self.total}
        if "step" in info:
            info["step"] = info["step"] + self.offset
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(dict(info))

    def on_step_end(self, info: dict) -> None:
        """Forward a step event."""
        self._send("on_step_end", info)

    def on_epoch_end(self, info: dict) -> None:
        """Forward an epoch record."""
        self._send("on_epoch_end", info)


def held_out_score(
    adapter: nn.Module, g_student: Module, g_teacher: Module, feats: torch.Tensor, cfg: TrainConfig
) -> float:
    """Mean back-distillation loss of `adapter` on features (N, ...), with the same probes every call."""
    gen = torch.Generator(device=feats.device).manual_seed(cfg.seed + 4242)
    total, n, bs = 0.0, feats.shape[0], cfg.batch_size
    for i in range(0, n, bs):
        t = back_distillation_loss(
            feats[i : i + bs], adapter, g_student, g_teacher, generator=gen, **cfg.loss_options()
        )
        total += float(t.loss.detach()) * min(bs, n - i)
    return total / n


def search_children(
    supernet: SuperNet,
    score: Callable[[nn.Module], float],
    max_candidates: int,
    seed: int = 0,
    on_scored: Callable[[int, int, Candidate, float], None] | None = None,
) -> list[tuple[Candidate, float]]:
    """Score children with inherited weights, best first: every child if few, else evolution."""
    space = supernet.space
    every = space.candidates()
    budget = min(max_candidates, len(every))
    scored: dict[Candidate, float] = {}

    def run(c: Candidate) -> None:
        supernet.active = c
        scored[c] = score(supernet)
        if on_scored is not None:
            on_scored(len(scored), budget, c, scored[c])

    if len(every) <= max_candidates:
        for c in every:
            run(c)
    else:
        # Evolution: a random first population, then mutants of a random one of the best four.
        gen = torch.Generator().manual_seed(seed + 99)
        order = torch.randperm(len(every), generator=gen).tolist()
        for i in order[: max(2, budget // 2)]:
            run(every[i])
        fresh = [every[i] for i in order[max(2, budget // 2) :]]
        while len(scored) < budget:
            top = sorted(scored, key=scored.get)[:4]
            parent = top[int(torch.randint(len(top), (1,), generator=gen))]
            child = space.mutate(parent, gen)
            if child in scored or child not in every:
                child = next(c for c in fresh if c not in scored)  # stuck: a random unseen one
            run(child)
    return sorted(scored.items(), key=lambda kv: kv[1])


def warm_start_scores(
    warm_starts: Sequence[tuple[str, nn.Module, dict]],
    space: SearchSpace,
    score: Callable[[nn.Module], float],
    device: torch.device,
) -> list[dict]:
    """Each registered adapter's held-out score on the new features (or why it was skipped)."""
    out = []
    for name, module, spec in warm_starts:
        try:
            cfg = config_from_spec(spec)
        except (ValueError, TypeError) as exc:
            out.append({"name": name, "score": None, "skipped": f"bad spec: {exc}"})
            continue
        if cfg.in_shape != space.in_shape or cfg.out_shape != space.out_shape:
            out.append({"name": name, "score": None, "skipped": "shapes differ"})
            continue
        h = copy.deepcopy(module).to(device).eval()
        for p in h.parameters():
            p.requires_grad_(True)
        out.append({"name": name, "score": score(h), "module": h, "config": cfg})
    return out


def lift_warm_starts(warm: list[dict], ranked: list[tuple[Candidate, float]], space: SearchSpace,
                     seed: int) -> None:
    """Grow each scored warm start, in place, into the best-ranked child that holds it exactly.

    The score stays valid (the lifted adapter computes the same function); "lifted_into" names the child.
    """
    for w in warm:
        if w.get("score") is None:
            continue
        target = next((c for c, _ in ranked if can_lift(w["config"], space.config(c))), None)
        if target is not None:
            w["module"] = lift(w["module"], w["config"], space.config(target), seed)
            w["config"], w["lifted_into"] = space.config(target), child_name(target)


def child_name(c: Candidate) -> str:
    """Short label of a child: "d1 k3", "d2 w32 k3 skip"."""
    if c.layers == 1:
        return f"d1 k{c.kernel_size}"
    return f"d{c.layers} w{c.hidden} k{c.kernel_size}{' skip' if c.skip else ''}"


def _per_epoch(cfg: TrainConfig, n_train: int) -> int:
    return cfg.steps_per_epoch or math.ceil(n_train / min(cfg.batch_size, n_train))


def steps_for(cfg: TrainConfig, n_train: int) -> int:
    """The steps a plain run_transplant with `cfg` would run at most."""
    return cfg.budget(n_train)[0]


def train_for(
    module: nn.Module,
    obj: Callable,
    cfg: TrainConfig,
    steps: int,
    data: list,
    val: list | None,
    callbacks: Sequence[Any],
    should_stop: Callable[[], bool] | None,
) -> Trainer:
    """A Trainer run of exactly `steps` optimiser steps (fewer only if early stopping ends it)."""
    per_epoch = _per_epoch(cfg, data[0].shape[0])
    stage_cfg = dataclasses.replace(cfg, steps=None, max_steps=steps,
                                    epochs=max(1, math.ceil(steps / per_epoch)))
    trainer = Trainer(module, obj, stage_cfg, callbacks=callbacks, should_stop=should_stop)
    trainer.fit(data, val)
    return trainer


def train_supernet(
    supernet: SuperNet,
    plan: AutoBudget,
    method: str,
    g_student: Module,
    g_teacher: Module,
    cfg: TrainConfig,
    steps: int,
    train_data: list,
    gen: torch.Generator,
    callbacks: Sequence[Any] = (),
    should_stop: Callable[[], bool] | None = None,
) -> Trainer:
    """Train the super-network for `steps` steps, each on the child(ren) budget.sampling picks.

    gen draws the back-distillation probes; the caller passes the same one on to the later stages.
    """
    space = supernet.space
    child_gen = torch.Generator().manual_seed(cfg.seed + 2)
    inner = _objective(method, supernet, g_student, g_teacher, cfg, gen)

    def super_obj(batch: Sequence[torch.Tensor]) -> dict:
        if plan.sampling != "sandwich":
            supernet.active = space.sample(child_gen, plan.sampling)
            return inner(batch)
        # Sandwich rule: the largest child and a uniform one share one optimiser step.
        outs = []
        for c in (space.largest(), space.sample(child_gen)):
            supernet.active = c
            outs.append(inner(batch))
        return {k: sum(o[k] for o in outs) for k in outs[0] if all(k in o for o in outs)}

    return train_for(supernet, super_obj, cfg, steps, train_data, None, callbacks, should_stop)


def _num(v: Any) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


class Stepper:
    """Resumable training of one adapter: run(n) continues with the same optimiser state and data order.

    Successive halving trains each survivor in several rounds; restarting a Trainer per round would
    reset Adam's moments and replay the same first batches every round.
    """

    def __init__(
        self,
        module: nn.Module,
        objective: Callable,
        cfg: TrainConfig,
        data: list,
        seed: int,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.module, self.objective, self.cfg, self.data = module, objective, cfg, data
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(seed)
        self.should_stop = should_stop
        self.n = data[0].shape[0]
        self.bs = min(cfg.batch_size, self.n)
        self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        self.steps_done = 0

    def run(self, steps: int, callbacks: Sequence[Any] = ()) -> dict:
        """`steps` more optimiser steps; the mean training losses over them (a history record)."""
        self.module.train()
        sums = {"loss": 0.0, "loss_out": 0.0, "loss_jac": 0.0}
        for i in range(steps):
            if self.should_stop is not None and self.should_stop():
                raise Cancelled(f"cancelled in the race, step {self.steps_done}")
            if self.pos + self.bs > self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            idx = self.perm[self.pos : self.pos + self.bs]
            self.pos += self.bs
            out = self.objective([t[idx] for t in self.data])
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {float(loss.detach())} in the race, step {self.steps_done + 1}; "
                    "lower the learning rate or lambda_jac"
                )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.opt.step()
            self.steps_done += 1
            vals = {k: _num(out.get(k, loss if k == "loss_out" else 0.0)) for k in sums}
            for k in sums:
                sums[k] += vals[k]
            info = {"step": i + 1, "loss": vals["loss"], "loss_out": vals["loss_out"],
                    "loss_jac": vals["loss_jac"]}
            for cb in callbacks:
                cb.on_step_end(info)  # Staged callbacks: the stage, round and overall step are added
        self.module.eval()
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        record = {"step": steps, "own_steps": self.steps_done, **means}
        for cb in callbacks:
            cb.on_epoch_end(record)  # one record per round: what a job's history shows of the race
        return record


@dataclasses.dataclass
class Prepared:
    """The fixed inputs of a search: features, teacher outputs and the train / held-out split."""

    space: SearchSpace
    train_data: list
    """[features, teacher outputs, labels] of the training split."""
    val_data: list | None
    """The same for the held-out split (None when val_fraction is 0)."""
    n_train: int
    n_val: int

    @property
    def held_out(self) -> torch.Tensor:
        """Features every score is computed on (the training split when nothing is held out)."""
        return (self.val_data or self.train_data)[0]


def prepare(
    f: Module, g_teacher: Module, x: torch.Tensor, y: torch.Tensor | None, cfg: TrainConfig,
    plan: AutoBudget, device: torch.device,
) -> Prepared:
    """Features of x through f, the teacher's outputs on them, the seeded split and the search space."""
    feats = batched_apply(f, x.float(), device=device)  # (N, *feature_shape), fixed
    y_t = batched_apply(g_teacher, feats)  # (N, *out_shape)
    in_shape = tuple(feats.shape[1:])
    choices = {k: getattr(plan, k) for k in SPACE_KEYS}
    space = SearchSpace.for_shapes(in_shape, plan.out_shape or in_shape, **choices)
    tr_idx, va_idx = _split(x.shape[0], cfg.val_fraction, cfg.seed)
    labels = y.to(device) if y is not None else torch.zeros(x.shape[0], device=device)
    data = [feats, y_t, labels]
    train_data = [t[tr_idx.to(device)] for t in data]
    val_data = [t[va_idx.to(device)] for t in data] if len(va_idx) else None
    return Prepared(space, train_data, val_data, len(tr_idx), len(va_idx))
