"""run_auto_transplant: choose an adapter's architecture and initial weights, then fine-tune it.

Stages (reported to the callbacks with a "stage" key):
  supernet  train the one-shot super-network once (random connection dropping, Sun, Dou & Yan,
            ECCV 2020) with the method's loss; budget.sampling picks each step's child(ren):
            depth first (default), uniform over the children, or the sandwich rule;
  search    score children by held-out back-distillation loss with their inherited weights
            (exhaustive when the space is small, else evolutionary), and score the warm starts
            (registered adapters into the same task module) the same way;
  race      (budget.finalists > 1) give the best few starting points a short trial fine-tune each
            and keep the one with the lowest held-out loss after it;
  finetune  train the kept adapter (extracted child or registered adapter) for the remaining steps.
No child is ever trained from scratch; all stages together run budget.steps optimiser steps.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from transplant.adapters import adapter_spec, config_from_spec
from transplant.blackbox import batched_apply, frozen
from transplant.distill.losses import back_distillation_loss
from transplant.distill.trainer import TrainConfig, Trainer
from transplant.errors import Cancelled
from transplant.metrics import agreement, task_metric
from transplant.run import TransplantResult, _objective, _split, check_inputs
from transplant.search.budget import SPACE_KEYS, AutoBudget
from transplant.search.space import Candidate, SearchSpace
from transplant.search.supernet import SuperNet

Module = Callable[[torch.Tensor], torch.Tensor]
class _Staged:
    """Forwards trainer events to the user's callbacks with a stage and an overall step."""

    def __init__(self, callbacks: Sequence[Any], stage: str, offset: int, total: int) -> None:
        self.callbacks, self.stage, self.offset, self.total = list(callbacks), stage, offset, total

    def _send(self, name: str, info: dict) -> None:
        info = {**info, "stage": self.stage, "stage_step": info.get("step"), "total_steps": self.total}
        if "step" in info:
            info["step"] = info["step"] + self.offset
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(dict(info))

    def on_step_end(self, info: dict) -> None:
        self._send("on_step_end", info)

    def on_epoch_end(self, info: dict) -> None:
        self._send("on_epoch_end", info)


def held_out_score(
    adapter: nn.Module, g_student: Module, g_teacher: Module, feats: torch.Tensor, cfg: TrainConfig
) -> float:
    """Mean back-distillation loss of `adapter` on features (N, ...), with the same probes every call."""
    gen = torch.Generator(device=feats.device).manual_seed(cfg.seed + 4242)
    total, n, bs = 0.0, feats.shape[0], cfg.batch_size
    for i in range(0, n, bs):
        t = back_distillation_loss(
            feats[i : i + bs],
            adapter,
            g_student,
            g_teacher,
            lambda_jac=cfg.lambda_jac,
            probes=cfg.probes,
            normalise=cfg.normalise,
            output_loss=cfg.output_loss,
            probe_dist=cfg.probe_dist,
            generator=gen,
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


def _warm_start_scores(
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


def _finalists(
    ranked: list[tuple[Candidate, float]], warm: list[dict], k: int, supernet: SuperNet
) -> list[dict]:
    """The k best starting points, children and warm starts ranked alike, as trainable adapters."""
    pool = [{"name": _child_name(c), "score": s, "child": c, "warm": None} for c, s in ranked[:k]]
    pool += [{**w, "warm": w["name"]} for w in warm if w["score"] is not None]
    chosen = sorted(pool, key=lambda p: p["score"])[:k]
    for p in chosen:
        if p["warm"] is None:
            p["module"], p["config"] = supernet.extract(p["child"]), supernet.space.config(p["child"])
        for q in p["module"].parameters():
            q.requires_grad_(True)
    return chosen


def _child_name(c: Candidate) -> str:
    if c.layers == 1:
        return f"d1 k{c.kernel_size}"
    return f"d{c.layers} w{c.hidden} k{c.kernel_size}{' skip' if c.skip else ''}"


def _steps_for(cfg: TrainConfig, n_train: int) -> int:
    """The steps a plain run_transplant with `cfg` would run at most."""
    per_epoch = cfg.steps_per_epoch or math.ceil(n_train / min(cfg.batch_size, n_train))
    steps = cfg.epochs * per_epoch
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def _train(
    module: nn.Module,
    obj: Callable,
    cfg: TrainConfig,
    steps: int,
    data: list,
    val: list | None,
    callbacks: Sequence[Any],
    should_stop: Callable[[], bool] | None,
) -> Trainer:
    n = data[0].shape[0]
    per_epoch = cfg.steps_per_epoch or math.ceil(n / min(cfg.batch_size, n))
    stage_cfg = dataclasses.replace(cfg, max_steps=steps, epochs=max(1, math.ceil(steps / per_epoch)))
    trainer = Trainer(module, obj, stage_cfg, callbacks=callbacks, should_stop=should_stop)
    trainer.fit(data, val)
    return trainer


def run_auto_transplant(
    f: Module,
    g_teacher: Module,
    g_student: Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    method: str = "back_distillation",
    budget: dict | None = None,
    warm_starts: Sequence[tuple[str, nn.Module, dict]] = (),
    train: TrainConfig | None = None,
    callbacks: Sequence[Any] = (),
    should_stop: Callable[[], bool] | None = None,
) -> TransplantResult:
    """Search the adapter's architecture (one-shot super-net) and start (warm starts), then fine-tune."""
    check_inputs(method, x, y)
    cfg, plan = train or TrainConfig(), AutoBudget.from_dict(budget)
    device = cfg.resolved_device()
    t0 = time.perf_counter()
    with frozen(f, g_teacher, g_student, device=device):
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
        held_out = (val_data or train_data)[0]
        total = plan.steps or _steps_for(cfg, len(tr_idx))
        n_super = max(1, int(round(total * plan.supernet_fraction)))
        n_fine = max(1, total - n_super)

        # Stage 1: the super-network (budget.sampling picks the children of each step).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            supernet = SuperNet(space).to(device)
        gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
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

        staged = _Staged(callbacks, "supernet", 0, total)
        sup = _train(supernet, super_obj, cfg, n_super, train_data, None, [staged], should_stop)

        # Stage 2: children and warm starts, scored alike on held-out features.
        def score(h: nn.Module) -> float:
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled during the adapter search")
            return held_out_score(h, g_student, g_teacher, held_out, cfg)

        search_cb = _Staged(callbacks, "search", sup.steps_done, total)

        def on_scored(i: int, n: int, c: Candidate, s: float) -> None:
            search_cb.on_step_end({"step": 0, "candidate": i, "candidates": n, "loss": s})

        ranked = search_children(supernet, score, plan.max_candidates, cfg.seed, on_scored)
        warm = _warm_start_scores(warm_starts, space, score, device)
        finalists = _finalists(ranked, warm, plan.finalists, supernet)

        # Stage 3a: a short trial fine-tune of each finalist when there are several; held-out loss
        # after the trial decides (inherited scores rank children trained for different step counts).
        done = sup.steps_done
        race: list[dict] = []
        n_trial = int(n_fine * plan.trial_fraction) // len(finalists) if len(finalists) > 1 else 0
        if n_trial >= 1:
            for i, fin in enumerate(finalists):
                obj = _objective(method, fin["module"], g_student, g_teacher, cfg, gen)
                trial_cb = _Staged(callbacks, "race", done, total)
                trial = _train(fin["module"], obj, cfg, n_trial, train_data, None, [trial_cb], should_stop)
                done += trial.steps_done
                fin["raced"] = score(fin["module"])
                fin["history"] = [{**r, "stage": "race", "finalist": i} for r in trial.history]
                race.append({"name": fin["name"], "score": fin["score"], "raced_score": fin["raced"]})
        winner = min(finalists, key=lambda fin: fin.get("raced", fin["score"]))
        h, config, warm_name = winner["module"], winner["config"], winner["warm"]
        start_score = winner.get("raced", winner["score"])

        # Stage 3b: fine-tune the kept adapter from its inherited (or registered) weights.
        obj = _objective(method, h, g_student, g_teacher, cfg, gen)
        start_state = copy.deepcopy(h.state_dict())
        fine_cb = _Staged(callbacks, "finetune", done, total)
        n_rest = max(1, total - done)
        fine = _train(h, obj, cfg, n_rest, train_data, val_data, [fine_cb], should_stop)
        final_score = held_out_score(h, g_student, g_teacher, held_out, cfg)
        if final_score > start_score:  # fine-tuning made the held-out loss worse: keep the start
            h.load_state_dict(start_state)
            final_score = start_score
        h.eval()
        on = val_data if val_data is not None else train_data
        with torch.no_grad():
            y_s = batched_apply(lambda z: g_student(h(z)), on[0])
        metrics: dict = {
            "method": method,
            "teacher_agreement": agreement(y_s, on[1]) if y_s.dim() >= 2 else None,
            "metrics_on": "val" if val_data is not None else "train",
            "val_loss": final_score,
            "n_train": int(len(tr_idx)),
            "n_val": int(len(va_idx)),
            "steps": done + fine.steps_done,
            "epochs_run": len(sup.history) + sum(len(f.get("history", ())) for f in finalists)
            + len(fine.history),
            "device": str(device),
        }
        if y is not None:
            metrics.update(task_metric(y_s, on[2]))
    metrics["search"] = {
        "candidates": [{"spec": adapter_spec(space.config(c)), "score": s} for c, s in ranked],
        "chosen": adapter_spec(config),
        "chosen_score": winner["score"],
        "warm_start": warm_name,
        "warm_starts": [{k: w[k] for k in ("name", "score", "skipped") if k in w} for w in warm],
        "race": race,
        "supernet_steps": sup.steps_done,
        "race_steps": done - sup.steps_done,
        "finetune_steps": fine.steps_done,
        "space_size": len(space.candidates()),
        "wall_s": time.perf_counter() - t0,
    }
    metrics["wall_s"] = time.perf_counter() - t0
    h = h.cpu().eval()
    history = [{**r, "stage": "supernet"} for r in sup.history]
    history += [r for fin in finalists for r in fin.get("history", ())]
    history += [{**r, "stage": "finetune"} for r in fine.history]
    return TransplantResult(
        adapter=h, config=config, spec=adapter_spec(config), metrics=metrics, history=history
    )
