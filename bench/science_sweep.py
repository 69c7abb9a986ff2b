"""A small, fair settings study of distillation and back-distillation: python -m bench.science_sweep.

Issue 3 asks that what was changed to get the science result (λ, probes, normalisation, adapter shape)
be written down. This sweeps a small grid per method — the SAME number of configurations for plain
distillation and back-distillation, and a small one for the supervised baseline — selects each
method's setting by its score on a VALIDATION split (held-out samples of the new category's labelled
pool, never used for training and disjoint from the test split), then evaluates the chosen settings on
the test split with the protocol of bench/science.py: supervised with 10/20/50/100 labels, and
distillation / back-distillation with no labels (all unlabelled inputs, early stopping on 15 % of them)
and with few unlabelled inputs (8, 32). The test split is touched only in that final step.

Writes bench/results/science_sweep.md and science_sweep.json (`--quick`: *_quick.*).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.commentary import write_keeping_commentary
from transplant import TrainConfig, run_transplant
from transplant.metrics import agreement, task_metric
from transplant.world import build_world

RESULTS = Path(__file__).parent / "results"
COMMENTARY = "<!-- commentary (kept on rewrite) -->"
VAL_SEED = 4242  # fixes which labelled-pool samples form the validation split (same for every run)

# One configuration = the knobs that may differ from bench/science.py's defaults.
BASE = {"lambda_jac": 1.0, "probes": 1, "normalise": "probe", "output_loss": "mse", "steps": 200, "kernel": 1}


def _c(**kw) -> dict:
    return {**BASE, **kw}


# Equal budgets: 8 configurations each for distillation and back-distillation. Distillation has fewer
# knobs, so it gets their full product (output loss × steps × adapter kernel); back-distillation varies
# one knob at a time around the current defaults (λ, K probes, normalisation, output loss, steps, kernel).
GRID = {
    "distillation": [
        _c(output_loss=o, steps=st, kernel=k) for o in ("mse", "kl") for st in (200, 600) for k in (1, 3)
    ],
    "back_distillation": [
        _c(),
        _c(lambda_jac=0.1),
        _c(lambda_jac=10.0),
        _c(probes=4),
        _c(normalise="batch"),
        _c(output_loss="kl"),
        _c(steps=600),
        _c(kernel=3),
    ],
    # The baseline gets the same step and adapter choices (selected with its 100 labels).
    "supervised": [_c(steps=st, kernel=k) for st in (200, 600) for k in (1, 3)],
}
RELEVANT = {  # knobs that mean something for a method (for naming and tables)
    "distillation": ("output_loss", "steps", "kernel"),
    "back_distillation": ("lambda_jac", "probes", "normalise", "output_loss", "steps", "kernel"),
    "supervised": ("steps", "kernel"),
}
SHORT = {"supervised": "sup", "distillation": "dist", "back_distillation": "bd"}


def name(method: str, conf: dict) -> str:
    """A compact label, e.g. 'λ=1 K=1 probe mse 200st k1'."""
    parts = {
        "lambda_jac": f"λ={conf['lambda_jac']:g}",
        "probes": f"K={conf['probes']}",
        "normalise": conf["normalise"],
        "output_loss": conf["output_loss"],
        "steps": f"{conf['steps']}st",
        "kernel": f"k{conf['kernel']}",
    }
    return " ".join(parts[k] for k in RELEVANT[method])


def settings(quick: bool) -> dict:
    """Everything that decides the numbers, written into the report."""
    return {
        "size": "small" if quick else "full",
        "worlds": ["shapes", "digits"],
        "sweep_seeds": [0] if quick else [0, 1],
        "final_seeds": [0, 1] if quick else [0, 1, 2],
        "labels": [10, 100] if quick else [10, 20, 50, 100],
        "few": [8] if quick else [8, 32],
        "n_val": 64 if quick else 256,
        "batch_size": 32,
        "lr": 3e-3,
        "val_fraction_all": 0.15,
        "patience": 3,
        "steps_per_epoch": 5 if quick else 20,
        "steps_scale": 0.05 if quick else 1.0,
        "grid_limit": 2 if quick else None,
        "selection": "mean validation task metric over the world's new-category cells and sweep seeds",
    }


def _train_config(s: dict, conf: dict, seed: int, with_val: bool) -> TrainConfig:
    spe = s["steps_per_epoch"]
    steps = int(conf["steps"] * s["steps_scale"])  # total budget; science.py: 10 epochs × 20 = 200
    return TrainConfig(
        epochs=max(1, steps // spe),
        steps_per_epoch=spe,
        batch_size=s["batch_size"],
        lr=s["lr"],
        seed=seed,
        val_fraction=s["val_fraction_all"] if with_val else 0.0,
        patience=s["patience"],
        lambda_jac=conf["lambda_jac"],
        probes=conf["probes"],
        normalise=conf["normalise"],
        output_loss=conf["output_loss"],
    )


def _adapter(conf: dict) -> dict:
    return {"arch": "conv", "layers": 2, "kernel_size": conf["kernel"], "skip": True}


def _splits(d, n_val: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation indices, remaining labelled-pool indices) of the category's labelled pool."""
    perm = torch.randperm(len(d.train), generator=torch.Generator().manual_seed(VAL_SEED))
    return perm[:n_val], perm[n_val:]


def _evaluate(world, cat: str, task: str, h, samples) -> tuple[float, float]:
    """(task metric, agreement with the teacher) of g_S(h(f(x))) on `samples`."""
    f, g_t = world.teachers[cat][task]
    with torch.no_grad():
        feats = f(samples.x)
        y_s = world.generic[task](h(feats))
        return task_metric(y_s, samples.labels(task))["task_metric"], agreement(y_s, g_t(feats))


def _train(world, cat, task, method, conf, s, seed, samples, labelled, with_val):
    f, g_t = world.teachers[cat][task]
    res = run_transplant(
        f,
        g_t,
        world.generic[task],
        samples.x,
        samples.labels(task) if labelled else None,
        method=method,
        adapter=_adapter(conf),
        train=_train_config(s, conf, seed, with_val),
    )
    return res.adapter


def _grid(s: dict) -> dict:
    return {m: confs[: s["grid_limit"]] if s["grid_limit"] else confs for m, confs in GRID.items()}


def _sweep_one(world, method: str, conf: dict, s: dict) -> dict:
    """Validation scores of one configuration: {"conf", "val": {cell: [metric per seed]}, "agree": {...}}."""
    rec: dict = {"conf": conf, "val": {}, "agree": {}}
    for cat in world.new_categories:
        d = world.data[cat]
        val_idx, pool_idx = _splits(d, s["n_val"])
        val = d.train.take(val_idx)
        for task in world.tasks:
            cell = f"{world.name} / {cat} / {task}"
            for seed in s["sweep_seeds"]:
                if method == "supervised":  # selected with the most labels of the study
                    gen = torch.Generator().manual_seed(seed)
                    pick = pool_idx[torch.randperm(len(pool_idx), generator=gen)]
                    samples, labelled, with_val = d.train.take(pick[: s["labels"][-1]]), True, False
                else:
                    samples, labelled, with_val = d.unlabelled, False, True
                h = _train(world, cat, task, method, conf, s, seed, samples, labelled, with_val)
                m, a = _evaluate(world, cat, task, h, val)
                rec["val"].setdefault(cell, []).append(m)
                rec["agree"].setdefault(cell, []).append(a)
    return rec


def combine_winners(method: str, recs: dict) -> dict:
    """Stage 2: each knob set to its best value among the one-knob-from-BASE configurations run so far."""
    combo = dict(BASE)
    for knob in RELEVANT[method]:
        cands = [
            r for r in recs.values() if all(r["conf"][k] == BASE[k] for k in RELEVANT[method] if k != knob)
        ]
        if cands:
            combo[knob] = max(cands, key=lambda r: _mean_all(r["val"]))["conf"][knob]
    return combo


def sweep(world, s: dict, log) -> dict:
    """{method: {config name: record}} on validation: the grid, then the combination of per-knob winners."""
    out: dict = {}
    for method, confs in _grid(s).items():
        recs = out.setdefault(method, {})
        stage2 = [] if method == "supervised" else [None]  # None = computed after stage 1
        for i, conf in enumerate([*confs, *stage2]):
            conf = conf or combine_winners(method, recs)
            key = name(method, conf)
            if key in recs:  # distillation's product grid already holds its combination
                log(f"  sweep {world.name} {SHORT[method]} stage 2 [{key}]: already in the grid")
                continue
            recs[key] = _sweep_one(world, method, conf, s)
            recs[key]["stage"] = 1 if i < len(confs) else 2
            log(f"  sweep {world.name} {SHORT[method]} [{key}]: val {_mean_all(recs[key]['val']):.4f}")
    return out


def _mean_all(per_cell: dict) -> float:
    return statistics.mean(v for vals in per_cell.values() for v in vals)


def select(sw: dict) -> dict:
    """Each method's configuration with the best mean validation metric (ties: the earlier, i.e. simpler)."""
    chosen = {}
    for method, recs in sw.items():
        best = max(recs, key=lambda k: (_mean_all(recs[k]["val"]), -list(recs).index(k)))
        chosen[method] = best
    return chosen


def final(world, sw: dict, chosen: dict, s: dict, log) -> dict:
    """Test metrics of the chosen settings: {cell: {column: [metric per seed]}} (science.py's protocol)."""
    cells: dict = {}
    for cat in world.new_categories:
        d = world.data[cat]
        _, pool_idx = _splits(d, s["n_val"])
        for task in world.tasks:
            f, g_t = world.teachers[cat][task]
            te = d.test
            with torch.no_grad():
                cols = {
                    "teacher": [task_metric(g_t(f(te.x)), te.labels(task))["task_metric"]],
                    "no adapter": [task_metric(world.generic[task](f(te.x)), te.labels(task))["task_metric"]],
                }
            for seed in s["final_seeds"]:
                gen = torch.Generator().manual_seed(seed)
                pick = pool_idx[torch.randperm(len(pool_idx), generator=gen)]
                upick = torch.randperm(len(d.unlabelled), generator=torch.Generator().manual_seed(seed))
                runs = [("supervised", f"sup {n}", d.train.take(pick[:n]), True, False) for n in s["labels"]]
                for method in ("distillation", "back_distillation"):
                    runs.append((method, f"{SHORT[method]} all", d.unlabelled, False, True))
                    runs += [
                        (method, f"{SHORT[method]} {n}", d.unlabelled.take(upick[:n]), False, False)
                        for n in s["few"]
                    ]
                    # The untuned defaults beside the tuned setting, on the same data.
                    if chosen[method] != name(method, BASE):
                        runs.append((method, f"{SHORT[method]} all (default)", d.unlabelled, False, True))
                for method, col, samples, labelled, with_val in runs:
                    conf = BASE if col.endswith("(default)") else sw[method][chosen[method]]["conf"]
                    h = _train(world, cat, task, method, conf, s, seed, samples, labelled, with_val)
                    cols.setdefault(col, []).append(_evaluate(world, cat, task, h, te)[0])
            key = f"{world.name} / {cat} / {task}"
            cells[key] = cols
            log(f"  final {key}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in cols.items()))
    return cells


def _fmt(v: list[float]) -> str:
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


def write_report(dump: dict, out: Path) -> str:
    """Markdown: grid with validation scores, chosen settings, final test tables, headline."""
    s = dump["settings"]
    lines = ["# Settings study: distillation vs. back-distillation (bench/science_sweep.py)", ""]
    wins_sup = wins_dist = total = 0
    gaps = []
    for w in dump["worlds"].values():
        for cols in w["cells"].values():
            bd, sup, dist = (
                statistics.mean(cols[c]) for c in ("bd all", f"sup {s['labels'][-1]}", "dist all")
            )
            total += 1
            wins_sup += bd >= sup
            wins_dist += bd >= dist
            gaps.append(bd - dist)
    head = (
        f"**Headline (tuned on validation, scored on test)**: back-distillation with no labels ≥ supervised "
        f"with {s['labels'][-1]} labels in {wins_sup}/{total} cells; ≥ tuned plain distillation in "
        f"{wins_dist}/{total} cells (mean difference bd − dist = {statistics.mean(gaps):+.3f})."
    )
    lines += [head, ""]
    for wname, w in dump["worlds"].items():
        lines += [f"## World `{wname}`", "", "### Validation scores of the grid", ""]
        lines += [
            "Mean validation task metric (accuracy for cls, mIoU for seg) per cell over sweep seeds "
            f"{s['sweep_seeds']}; `agree` = mean agreement with the teacher's argmax on the same split "
            "(a label-free criterion, shown for comparison). **Bold** = chosen.",
            "",
        ]
        cells = list(next(iter(next(iter(w["sweep"].values())).values()))["val"])
        lines += [
            "| method | setting | " + " | ".join(c.split(" / ", 1)[1] for c in cells) + " | mean | agree |",
            "|---|---|" + "---|" * (len(cells) + 2),
        ]
        for method, recs in w["sweep"].items():
            for cname, rec in recs.items():
                mark = "**" if cname == w["chosen"][method] else ""
                cname = cname + (" (stage 2)" if rec.get("stage") == 2 else "")
                vals = " | ".join(f"{statistics.mean(rec['val'][c]):.3f}" for c in cells)
                mean, agree = _mean_all(rec["val"]), _mean_all(rec["agree"])
                lines.append(
                    f"| {SHORT[method]} | {mark}{cname}{mark} | {vals} "
                    f"| {mark}{mean:.4f}{mark} | {agree:.4f} |"
                )
        lines += ["", "Chosen: " + "; ".join(f"{SHORT[m]} = `{c}`" for m, c in w["chosen"].items()), ""]
        lines += ["### Test split (chosen settings)", ""]
        have = list(next(iter(w["cells"].values())))
        order = ["teacher", "no adapter", *[f"sup {n}" for n in s["labels"]]]
        for n in ("all (default)", "all", *s["few"]):
            order += [f"{m} {n}" for m in ("dist", "bd")]
        cols = [c for c in order if c in have]
        lines += ["| cell | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for key, cs in w["cells"].items():
            lines.append(f"| {key} | " + " | ".join(_fmt(cs[c]) for c in cols) + " |")
        lines += [""]
    lines += ["## Settings", "", "```", json.dumps(s, indent=2), "```", ""]
    lines += [f"Wall time: {sum(w['wall_s'] for w in dump['worlds'].values()):.0f} s, 1 CPU thread.", ""]
    # Hand-written commentary after the marker survives a rewrite (e.g. --assemble).
    write_keeping_commentary(out, "\n".join(lines) + "\n", COMMENTARY)
    return head


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (small world, 2 configs, few steps)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worlds", nargs="*", default=None, help="subset of worlds (default: shapes digits)")
    p.add_argument("--assemble", action="store_true", help="only rewrite the markdown from the JSON dump")
    args = p.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    js, md = args.out / f"science_sweep{suffix}.json", args.out / f"science_sweep{suffix}.md"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.assemble:
        dump = json.loads(js.read_text())
        print(write_report(dump, md))
        return dump
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    if args.worlds:
        s["worlds"] = args.worlds
    dump = {"settings": s, "grid": GRID, "worlds": {}}
    if js.exists() and not args.quick:  # keep worlds already done by an earlier run
        dump["worlds"] = {
            k: v for k, v in json.loads(js.read_text())["worlds"].items() if k not in s["worlds"]
        }

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    for wname in s["worlds"]:
        t0 = time.perf_counter()
        world = build_world(seed=0, size=s["size"], name=wname)
        log(f"world {wname} built in {time.perf_counter() - t0:.0f} s")
        sw = sweep(world, s, log)
        chosen = select(sw)
        log(f"chosen {wname}: {chosen}")
        cells = final(world, sw, chosen, s, log)
        dump["worlds"][wname] = {
            "sweep": sw,
            "chosen": chosen,
            "cells": cells,
            "wall_s": time.perf_counter() - t0,
        }
        js.write_text(json.dumps(dump, indent=1))
        print(write_report(dump, md), flush=True)
    return dump


if __name__ == "__main__":
    main()
