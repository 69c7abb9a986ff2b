"""`"adapter": "auto"` against every fixed candidate, and warm against cold starts, on the benchmark world.

    python -m bench.search            # full: all candidates, 2 seeds (≈ 6–7 min on one core)
    python -m bench.search --quick    # smoke: 4 candidates, 1 seed, few steps

Each fixed candidate is trained alone by run_transplant for the same total number of optimiser steps
that run_auto_transplant spends (super-net + fine-tune); scores are on the new category's test
inputs: accuracy against the labels (which no method sees) and agreement with the teacher.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from transplant.adapters import adapter_spec, build_adapter, fit_adapter_config
from transplant.blackbox import frozen
from transplant.distill.trainer import TrainConfig, Trainer
from transplant.metrics import accuracy, agreement
from transplant.run import _objective, _split, run_transplant
from transplant.search import SearchSpace, held_out_score, run_auto_transplant
from transplant.world import build_world

RESULTS = Path(__file__).parent / "results"
SPACE = dict(depths=(1, 2, 3), widths=(16, 32, 64), kernels=(1, 3))


def _label(spec: dict) -> str:
    c = spec["config"]
    if c["layers"] == 1:
        return f"d1 k{c['kernel_size']}"
    return f"d{c['layers']} w{c['hidden']} k{c['kernel_size']}{' skip' if c['skip'] else ''}"


def _test_scores(h, f, g_t, g_s, test) -> dict:
    with torch.no_grad(), frozen(f, g_t, g_s):
        feats = f(test.x)
        y_s, y_t = g_s(h.eval()(feats)), g_t(feats)
    return {"acc": 100 * accuracy(y_s, test.y_cls), "agree": 100 * agreement(y_s, y_t)}


def _setting(world, cat: str):
    f, g_t = world.teachers[cat]["cls"]
    g_s = world.generic["cls"]
    d = world.data[cat]
    x = torch.cat([d.train.x, d.unlabelled.x])  # unlabelled inputs only: labels are never used
    return f, g_t, g_s, x, d.test


def _curve(h, f, g_t, g_s, x, test, cfg: TrainConfig, steps: int, every: int) -> list[tuple[int, float]]:
    """Train h by back-distillation for `steps`, recording test agreement every `every` steps."""
    curve = [(0, _test_scores(h, f, g_t, g_s, test)["agree"])]

    class Probe:
        def on_step_end(self, info):
            if info["step"] % every == 0:
                curve.append((info["step"], _test_scores(h, f, g_t, g_s, test)["agree"]))
                h.train()

    with torch.no_grad(), frozen(f, g_t, g_s):
        feats = f(x)
        y_t = g_t(feats)
    tr, va = _split(x.shape[0], cfg.val_fraction, cfg.seed)
    data = [feats, y_t, torch.zeros(x.shape[0])]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    run_cfg = dataclasses.replace(cfg, max_steps=steps, epochs=10**6)
    obj = _objective("back_distillation", h, g_s, g_t, run_cfg, gen)
    # No early stopping: the curve shows every step's weights, as a registry fine-tune would.
    trainer = Trainer(h, obj, run_cfg, callbacks=[Probe()])
    with frozen(f, g_t, g_s):
        trainer.fit([t[tr] for t in data], None)
    del va
    return curve


def _steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, v in curve if v >= target), None)


def run_seed(seed: int, steps: int, quick: bool, every: int) -> dict:
    t0 = time.perf_counter()
    world = build_world(seed, "small", "shapes")
    t_world = time.perf_counter() - t0
    cat = world.new_categories[0]
    f, g_t, g_s, x, test = _setting(world, cat)
    cfg = TrainConfig(
        batch_size=32, lr=3e-3, val_fraction=0.2, patience=10**6, seed=seed, epochs=10**6, max_steps=steps
    )
    space = SearchSpace.for_shapes(world.feature_shape, world.feature_shape, **SPACE)
    cands = space.candidates()
    if quick:
        cands = [cands[0], cands[1], cands[len(cands) // 2], cands[-1]]
    with torch.no_grad(), frozen(f, g_t, g_s):
        held_out = f(x)[_split(x.shape[0], cfg.val_fraction, cfg.seed)[1]]  # the split run_transplant uses
    fixed = []
    for c in cands:
        t, cpu = time.perf_counter(), time.process_time()
        r = run_transplant(f, g_t, g_s, x, method="back_distillation", adapter=space.config(c), train=cfg)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        fixed.append(
            {
                "label": _label(r.spec),
                "wall_s": wall,
                "cpu_s": cpu,
                "steps": r.metrics["steps"],
                "val_loss": held_out_score(r.adapter, g_s, g_t, held_out, cfg),
                **_test_scores(r.adapter, f, g_t, g_s, test),
            }
        )
    budget = {"steps": steps, **SPACE}
    t, cpu = time.perf_counter(), time.process_time()
    auto = run_auto_transplant(f, g_t, g_s, x, budget=budget, train=cfg)
    auto_wall, auto_cpu = time.perf_counter() - t, time.process_time() - cpu
    s = auto.metrics["search"]
    auto_row = {
        "label": "auto → " + _label(auto.spec),
        "wall_s": auto_wall,
        "cpu_s": auto_cpu,
        "steps": auto.metrics["steps"],
        "val_loss": auto.metrics["val_loss"],
        **_test_scores(auto.adapter, f, g_t, g_s, test),
        "supernet_steps": s["supernet_steps"],
        "finetune_steps": s["finetune_steps"],
        "ranked": [(_label(c["spec"]), c["score"]) for c in s["candidates"][:5]],
    }

    # Warm start: registered adapters of the old categories into the same task module (cls).
    warm = [
        (
            f"{c}/cls",
            world.old_adapters[c]["cls"],
            adapter_spec(fit_adapter_config(world.feature_shape, world.feature_shape)),
        )
        for c in world.old_categories
    ]
    auto_warm = run_auto_transplant(f, g_t, g_s, x, budget=budget, train=cfg, warm_starts=warm)
    sw = auto_warm.metrics["search"]
    # Warm vs cold fine-tune of the registered adapters' architecture, same steps, curves on test.
    best_warm = min((w for w in sw["warm_starts"] if w["score"] is not None), key=lambda w: w["score"])
    reg = dict((n, m) for n, m, _ in warm)[best_warm["name"]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cold_h = build_adapter(fit_adapter_config(world.feature_shape, world.feature_shape))
    cold = _curve(cold_h, f, g_t, g_s, x, test, cfg, steps, every)
    warm_curve = _curve(copy.deepcopy(reg).train(), f, g_t, g_s, x, test, cfg, steps, every)
    target = cold[-1][1]
    reach = _steps_to_reach(warm_curve, target)
    return {
        "seed": seed,
        "category": cat,
        "world_s": t_world,
        "fixed": fixed,
        "auto": auto_row,
        "auto_warm": {
            "warm_start": sw["warm_start"],
            "chosen": _label(sw["chosen"]),
            "warm_scores": {w["name"]: w["score"] for w in sw["warm_starts"]},
            "child_score": sw["candidates"][0]["score"],
            **_test_scores(auto_warm.adapter, f, g_t, g_s, test),
        },
        "warm_vs_cold": {
            "registered": best_warm["name"],
            "cold_curve": cold,
            "warm_curve": warm_curve,
            "target_agree": target,
            "cold_steps": steps,
            "warm_steps_to_target": reach,
            "ratio": (reach / steps) if reach is not None else None,
        },
    }


def _fmt(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


def report(runs: list[dict], steps: int, quick: bool, total_s: float) -> str:
    lines = [f'# `"adapter": "auto"` vs fixed adapters{" (quick smoke)" if quick else ""}', ""]
    lines += [
        f"World: `build_world(seed, 'small', 'shapes')`, new category, task `cls`, back-distillation on "
        f"384 unlabelled inputs (20 % held out), Adam lr 3e-3, batch 32, **{steps} steps per run** "
        f"(auto: super-net + fine-tune), no early stopping; scores on 128 test inputs. "
        f"One CPU thread. Space {SPACE} (+ skip on/off). Total bench time {total_s:.0f} s.",
        "",
    ]
    for r in runs:
        fixed = sorted(r["fixed"], key=lambda row: -row["acc"])
        a = r["auto"]
        best = fixed[0]
        med_wall = statistics.median(row["wall_s"] for row in fixed)
        sum_wall = sum(row["wall_s"] for row in fixed)
        med_cpu = statistics.median(row["cpu_s"] for row in fixed)
        sum_cpu = sum(row["cpu_s"] for row in fixed)
        med_acc = statistics.median(row["acc"] for row in fixed)
        default = next((row for row in fixed if row["label"] == "d2 w16 k1 skip"), None)
        lines += [
            f"## seed {r['seed']} (category {r['category']})",
            "",
            "| adapter | test acc % | teacher agreement % | held-out BD loss | steps | CPU s | wall s |",
            "|---|---|---|---|---|---|---|",
        ]
        lines.append(
            f"| **{a['label']}** | **{a['acc']:.1f}** | **{a['agree']:.1f}** | {a['val_loss']:.4f} | "
            f"{a['supernet_steps']}+{a['finetune_steps']} | {a['cpu_s']:.1f} | {a['wall_s']:.1f} |"
        )
        for row in fixed:
            lines.append(
                f"| {row['label']} | {row['acc']:.1f} | {row['agree']:.1f} | {_fmt(row['val_loss'], 4)} "
                f"| {row['steps']} | {row['cpu_s']:.1f} | {row['wall_s']:.1f} |"
            )
        w, aw = r["warm_vs_cold"], r["auto_warm"]
        lines += [
            "",
            f"- auto − best fixed: **{a['acc'] - best['acc']:+.1f}** acc points "
            f"({a['agree'] - max(x['agree'] for x in fixed):+.1f} agreement vs best agreement); "
            f"rank of auto's pick among fixed runs by acc: "
            f"{1 + sum(x['acc'] > a['acc'] for x in fixed)}/{len(fixed)}; median fixed acc {med_acc:.1f}"
            + (f", the default adapter (d2 w16 k1 skip) {default['acc']:.1f}." if default else "."),
            f"- CPU time (robust to shared cores): auto / median fixed = **{a['cpu_s'] / med_cpu:.2f}×**, "
            f"auto / all {len(fixed)} fixed runs = **{a['cpu_s'] / sum_cpu:.3f}×** "
            f"({a['cpu_s']:.1f} s vs {sum_cpu:.1f} s).",
            f"- wall: auto / median fixed run = **{a['wall_s'] / med_wall:.2f}×**, "
            f"auto / all {len(fixed)} fixed runs = **{a['wall_s'] / sum_wall:.3f}×** "
            f"({a['wall_s']:.1f} s vs {sum_wall:.1f} s).",
            "- search top 5 (held-out BD loss, inherited weights): "
            + ", ".join(f"{lab} {s:.4f}" for lab, s in a["ranked"]),
            f"- auto with warm starts {list(aw['warm_scores'])}: scores "
            + ", ".join(f"{k} {v:.4f}" for k, v in aw["warm_scores"].items())
            + f" vs best child {aw['child_score']:.4f} → warm start used: `{aw['warm_start']}`, "
            f"chose {aw['chosen']}, test acc {aw['acc']:.1f}, agreement {aw['agree']:.1f}.",
            f"- warm vs cold ({w['registered']} weights vs fresh init, same arch, {w['cold_steps']} steps): "
            f"cold final agreement {w['target_agree']:.1f} %; warm reaches it at step "
            f"{_fmt(w['warm_steps_to_target'], 0)} → steps ratio warm/cold **{_fmt(w['ratio'], 2)}**. "
            f"Curves (step: agreement) cold {_curve_str(w['cold_curve'])}; "
            f"warm {_curve_str(w['warm_curve'])}.",
            "",
        ]
    return "\n".join(lines)


def _curve_str(curve) -> str:
    return " ".join(f"{s}:{v:.0f}" for s, v in curve[:: max(1, len(curve) // 8)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    steps = args.steps or (40 if args.quick else 200)
    every = max(1, steps // 20)
    t0 = time.perf_counter()
    runs = []
    for seed in seeds:
        runs.append(run_seed(seed, steps, args.quick, every))
        print(f"seed {seed} done at {time.perf_counter() - t0:.0f} s", flush=True)
    text = report(runs, steps, args.quick, time.perf_counter() - t0)
    print(text)
    name = "search-quick" if args.quick else "search"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(runs, indent=1, default=str))
    if not args.quick:
        (RESULTS / f"{name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
