"""run_auto_transplant: choose an adapter's architecture and initial weights, then fine-tune it.

Stages (reported to the callbacks with a "stage" key):
  supernet  train the one-shot super-network once (random connection dropping, Sun, Dou & Yan,
            ECCV 2020) with the method's loss; budget.sampling picks each step's child(ren):
            the sandwich rule (default: the largest child and a uniform one), depth first, or
            uniform over the children;
  search    score children by held-out back-distillation loss with their inherited weights
            (exhaustive when the space is small, else evolutionary), and score the warm starts
            (registered adapters into the same task module) the same way;
  race      (budget.finalists > 1) give the best few starting points some training of their own
            and keep the one with the lowest held-out loss after it: one round ("race") or
            successive halving ("halving"), budget.selection; see select.py;
  finetune  train the kept adapter (extracted child or registered adapter) for the remaining steps.
No child is ever trained from scratch; all stages together run budget.steps optimiser steps.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from transplant.adapters import adapter_spec
from transplant.blackbox import frozen
from transplant.distill.trainer import TrainConfig
from transplant.errors import Cancelled
from transplant.run import TransplantResult, _objective, check_inputs, end_metrics
from transplant.search.budget import SPACE_KEYS, AutoBudget
from transplant.search.select import pick_finalists, run_rounds, schedule
from transplant.search.space import Candidate
from transplant.search.stages import (
    Staged,
    held_out_score,
    lift_warm_starts,
    prepare,
    search_children,
    steps_for,
    train_for,
    train_supernet,
    warm_start_scores,
)
from transplant.search.supernet import SuperNet

__all__ = ["SPACE_KEYS", "AutoBudget", "held_out_score", "run_auto_transplant", "search_children"]
Module = Callable[[torch.Tensor], torch.Tensor]


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
        prep = prepare(f, g_teacher, x, y, cfg, plan, device)
        space, train_data, val_data, held_out = prep.space, prep.train_data, prep.val_data, prep.held_out
        total = plan.steps or steps_for(cfg, prep.n_train)
        n_super = max(1, int(round(total * plan.supernet_fraction)))
        n_fine = max(1, total - n_super)

        # Stage 1: the super-network (budget.sampling picks the children of each step).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            supernet = SuperNet(space).to(device)
        gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # probes, shared by every stage
        staged = Staged(callbacks, "supernet", 0, total)
        sup = train_supernet(supernet, plan, method, g_student, g_teacher, cfg, n_super, train_data, gen,
                             [staged], should_stop)

        # Stage 2: children and warm starts, scored alike on held-out features.
        def score(h: nn.Module) -> float:
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled during the adapter search")
            return held_out_score(h, g_student, g_teacher, held_out, cfg)

        search_cb = Staged(callbacks, "search", sup.steps_done, total)

        def on_scored(i: int, n: int, c: Candidate, s: float) -> None:
            search_cb.on_step_end({"step": 0, "candidate": i, "candidates": n, "loss": s})

        ranked = search_children(supernet, score, plan.max_candidates, cfg.seed, on_scored)
        warm = warm_start_scores(warm_starts, space, score, device)
        if plan.lift_warm_starts:
            lift_warm_starts(warm, ranked, space, cfg.seed)
        finalists = pick_finalists(ranked, warm, plan.finalists, supernet, plan.stratify)

        # Stage 3a: the finalists get steps of their own before one is kept by held-out loss
        # (inherited scores rank children trained for different step counts).
        rounds = schedule(len(finalists), int(n_fine * plan.trial_fraction), plan.selection)
        winner, race, race_steps = run_rounds(
            finalists, rounds, lambda m: _objective(method, m, g_student, g_teacher, cfg, gen), score, cfg,
            train_data, callbacks, sup.steps_done, total, should_stop,
        )
        done = sup.steps_done + race_steps
        h, config, warm_name = winner["module"], winner["config"], winner["warm"]
        start_score = winner.get("raced", winner["score"])

        # Stage 3b: fine-tune the kept adapter from where it is (inherited or registered weights).
        obj = _objective(method, h, g_student, g_teacher, cfg, gen)
        start_state = copy.deepcopy(h.state_dict())
        fine_cb = Staged(callbacks, "finetune", done, total)
        fine = train_for(h, obj, cfg, max(1, total - done), train_data, val_data, [fine_cb], should_stop)
        final_score = held_out_score(h, g_student, g_teacher, held_out, cfg)
        if final_score > start_score:  # fine-tuning made the held-out loss worse: keep the start
            final_score = start_score
            h.load_state_dict(start_state)
        h.eval()
        metrics = end_metrics(h, g_student, method, train_data, val_data, y is not None)
        epochs = len(sup.history) + sum(len(f.get("history", ())) for f in finalists) + len(fine.history)
        metrics.update(val_loss=final_score, n_train=prep.n_train, n_val=prep.n_val,
                       steps=done + fine.steps_done, epochs_run=epochs, device=str(device))
    metrics["search"] = {
        "candidates": [{"spec": adapter_spec(space.config(c)), "score": s} for c, s in ranked],
        "chosen": adapter_spec(config),
        "chosen_score": winner["score"],
        "warm_start": warm_name,
        "warm_starts": [{k: w[k] for k in ("name", "score", "skipped", "lifted_into") if k in w}
                        for w in warm],
        "selection": plan.selection if rounds else None,
        "race": race,
        "supernet_steps": sup.steps_done,
        "race_steps": race_steps,
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
