"""Warm starts from the registry: a new version of a category module, its predecessor's adapter registered.

Two pre-declared scenarios per world (the new category's f and its task heads, i.e. the teacher pair):
  finetuned  the owner fine-tunes f and the heads a little (FINETUNE_STEPS at lr 1e-3 on the
             category's labelled data) and registers the result as f@2: the case reuse is for;
  retrained  the owner retrains f and the heads from scratch (another init): features are permuted
             and rescaled, so the old adapter should not help and the search should reject it.
In both, the registered adapter h_old was learned for f@1 by a plain back-distillation transplant
(the service's default adapter, STEPS steps). Warm (h_old) and cold (fresh default adapter) are then
fine-tuned on f@2 for CURVE_STEPS steps each, the held-out back-distillation loss recorded every
EVERY steps; the criterion is in steps_to_target.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from transplant.adapters import adapter_spec, build_adapter, fit_adapter_config
from transplant.blackbox import frozen
from transplant.distill.trainer import TrainConfig, Trainer
from transplant.run import _objective, _split, run_transplant
from transplant.search import held_out_score, run_auto_transplant
from transplant.world import OLD_ADAPTER, TASKS, _batches, _loss, train_teacher

FINETUNE_STEPS = 40
CURVE_STEPS = 300
EVERY = 10
WINDOW = 3
"""Evaluations averaged by the criterion (trailing mean; also the span of the cold run's final level)."""
NEAR = 1.1
"""Secondary criterion: the first step within 10 % of the cold run's final level."""


def new_version(world, cat: str, seed: int, mode: str) -> tuple[nn.Module, nn.Module]:
    """(f@2, g_T@2 for cls): the category's teacher pair fine-tuned a little, or retrained from scratch."""
    data = world.data[cat].train
    if mode == "retrained":
        f, heads = train_teacher(data, 3, 2, world.n_classes, world.info["steps"], seed * 100 + 77)
        return f, heads["cls"]
    f = copy.deepcopy(world.teachers[cat]["cls"][0])
    heads = {t: copy.deepcopy(world.teachers[cat][t][1]) for t in TASKS}
    params = [p for m in (f, *heads.values()) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3)
    for m in (f, *heads.values()):
        m.train()
    for idx in _batches(len(data), 64, FINETUNE_STEPS, torch.Generator().manual_seed(seed + 31)):
        b = data.take(idx)
        z = f(b.x)  # (B, 16, h, w)
        loss = sum(_loss(t, heads[t](z), b) for t in TASKS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in (f, *heads.values()):
        m.eval()
    return f, heads["cls"]


def curve(h, f, g_t, g_s, x, cfg: TrainConfig, steps: int, every: int) -> list[tuple[int, float]]:
    """Train h by back-distillation for `steps` (no early stopping); held-out loss every `every` steps."""
    with torch.no_grad(), frozen(f, g_t, g_s):
        feats = f(x)
        y_t = g_t(feats)
    tr, va = _split(x.shape[0], cfg.val_fraction, cfg.seed)
    held = feats[va]
    out = [(0, held_out_score(h, g_s, g_t, held, cfg))]

    class Probe:
        def on_step_end(self, info):
            if info["step"] % every == 0:
                out.append((info["step"], held_out_score(h, g_s, g_t, held, cfg)))

    data = [feats, y_t, torch.zeros(x.shape[0])]
    run_cfg = dataclasses.replace(cfg, max_steps=steps, epochs=10**6)
    obj = _objective("back_distillation", h, g_s, g_t, run_cfg, torch.Generator().manual_seed(cfg.seed + 1))
    with frozen(f, g_t, g_s):
        Trainer(h, obj, run_cfg, callbacks=[Probe()]).fit([t[tr] for t in data], None)
    return out


def steps_to_target(c: list[tuple[int, float]], target: float) -> int | None:
    """First step at which the trailing WINDOW-point mean of the held-out loss is ≤ target."""
    vals = [v for _, v in c]
    for i, (step, _) in enumerate(c):
        win = vals[max(0, i - WINDOW + 1) : i + 1]
        if sum(win) / len(win) <= target:
            return step
    return None


def run_scenario(world, cat, seed, mode, x, test, cfg, h_old, space_budget, scores) -> dict:
    """Warm vs cold curves and auto with/without the registry's adapters on f@2 of one scenario."""
    f2, g_t2 = new_version(world, cat, seed, mode)
    g_s = world.generic["cls"]
    f1, g_t1 = world.teachers[cat]["cls"]
    with torch.no_grad(), frozen(f1, g_t1, f2, g_t2):
        z1, z2 = f1(x), f2(x)  # (N, 16, h, w) each
        drift = float((z2 - z1).norm() / z1.norm())
        same = float((g_t2(z2).argmax(1) == g_t1(z1).argmax(1)).float().mean())
    fs = world.feature_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cold_h = build_adapter(fit_adapter_config(fs, fs, **OLD_ADAPTER))
    warm_h = copy.deepcopy(h_old).train()
    cold = curve(cold_h, f2, g_t2, g_s, x, cfg, CURVE_STEPS, EVERY)
    warm = curve(warm_h, f2, g_t2, g_s, x, cfg, CURVE_STEPS, EVERY)
    target = sum(v for _, v in cold[-WINDOW:]) / WINDOW
    cold_n, warm_n = steps_to_target(cold, target), steps_to_target(warm, target)
    # Secondary (added after the quick smoke showed both runs creeping to one plateau): within 10 %.
    cold_10, warm_10 = steps_to_target(cold, NEAR * target), steps_to_target(warm, NEAR * target)
    offered = registry(world, h_old)
    auto_cold = run_auto_transplant(f2, g_t2, g_s, x, budget=space_budget, train=cfg)
    auto_warm = run_auto_transplant(f2, g_t2, g_s, x, budget=space_budget, train=cfg, warm_starts=offered)
    sw = auto_warm.metrics["search"]
    return {
        "mode": mode,
        "feature_drift": drift,
        "teacher_v1_v2_agreement": same,
        "cold_curve": cold,
        "warm_curve": warm,
        "target_loss": target,
        "cold_steps": cold_n,
        "warm_steps": warm_n,
        "ratio": (warm_n / cold_n) if warm_n is not None and cold_n else None,
        "cold_steps_near": cold_10,
        "warm_steps_near": warm_10,
        "ratio_near": (warm_10 / cold_10) if warm_10 is not None and cold_10 else None,
        "cold_test": scores(cold_h, f2, g_t2, g_s, test),
        "warm_test": scores(warm_h, f2, g_t2, g_s, test),
        "auto_cold_test": scores(auto_cold.adapter, f2, g_t2, g_s, test),
        "auto_warm_test": scores(auto_warm.adapter, f2, g_t2, g_s, test),
        "auto_warm_start": sw["warm_start"],
        "auto_warm_lifted": {w["name"]: w["lifted_into"] for w in sw["warm_starts"] if "lifted_into" in w},
        "auto_warm_scores": {w["name"]: w["score"] for w in sw["warm_starts"]},
        "auto_best_child": sw["candidates"][0]["score"],
        "auto_race": sw["race"],
    }


def predecessor(world, cat: str, x, cfg: TrainConfig) -> nn.Module:
    """h_old: the service's default adapter learned on f@1 by a plain back-distillation transplant."""
    f, g_t = world.teachers[cat]["cls"]
    fs = world.feature_shape
    return run_transplant(f, g_t, world.generic["cls"], x, method="back_distillation",
                          adapter=fit_adapter_config(fs, fs, **OLD_ADAPTER),
                          train=cfg).adapter


def registry(world, h_old: nn.Module) -> list[tuple[str, nn.Module, dict]]:
    """The warm starts auto is offered: h_old and the old categories' adapters into the same task."""
    fs = world.feature_shape
    spec = adapter_spec(fit_adapter_config(fs, fs, **OLD_ADAPTER))
    return [("f@1-adapter", h_old, spec)] + [
        (f"{c}/cls", world.old_adapters[c]["cls"], spec) for c in world.old_categories
    ]


def run_warm(world, cat, seed, x, test, cfg, space_budget, scores) -> dict:
    """Both scenarios for one world; h_old is learned once on f@1 and registered."""
    h_old = predecessor(world, cat, x, cfg)
    return {m: run_scenario(world, cat, seed, m, x, test, cfg, h_old, space_budget, scores)
            for m in ("finetuned", "retrained")}
