"""Data-free rows of the science bench: python -m bench.science --datafree [--quick].

Same worlds, new categories, tasks, seeds, settings and held-out test splits as bench/science.py. Per
cell and seed: the real-input rows it is compared with (supervised 10/100 labels; distillation and
back-distillation on 8/32/128/all real unlabelled inputs), then for each synthesis method
(transplant/synth.py) back-distillation and plain distillation fed the *same* synthetic inputs, alone
(0 real inputs) and (deepinversion) mixed with 8/32/128 real ones; "di-cheap" is
deepinversion with half the inputs and half the steps (the wall-time goal). Synthesis cost (wall) and
quality (distance of the synthetic set's BatchNorm statistics to the stored ones, beside the real
inputs' own distance) are kept per cell. Writes bench/results/datafree.{md,json,png}.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from bench.science import _fmt, _score, _train_config
from bench.science import settings as science_settings
from transplant import run_transplant
from transplant.synth import SynthesisConfig, _Moments, bn_tap, mix_real, synthesise
from transplant.world import build_world

# (row name, synthesis method, overrides of the bench's synthesis settings, mixed with real inputs too)
VARIANTS = (
    ("deepinversion", "deepinversion", {}, True),
    ("features", "features", {}, False),
    ("noise", "noise", {}, False),
    ("di-cheap", "deepinversion", {"n": 128, "steps": 100}, False),
)
SHORT = {"distillation": "dist", "back_distillation": "bd"}


def settings(quick: bool) -> dict:
    """science.py's settings plus the synthesis's, written into the report."""
    s = science_settings(quick)
    s.update(
        labels=[100],
        worlds=["digits", "shapes"],  # digits first: its world builds in seconds
        synth_methods=[v[0] for v in VARIANTS],
        synth_variants={name: {"method": m, **o, "mixed": mixed} for name, m, o, mixed in VARIANTS},
        synth_n=64 if quick else 256,
        synth_steps=20 if quick else 200,
        synth_batch=64,
        mix_few=[8] if quick else [8, 32, 128],
    )
    return s


def _real_distance(f, g_t, x: torch.Tensor) -> float | None:
    """BatchNorm-statistics distance of real inputs: the floor a synthetic set is compared with."""
    m = _Moments()
    with bn_tap(f) as (run_f, st_f), bn_tap(g_t) as (run_g, st_g), torch.no_grad():
        feats, a_f = run_f(x)
        _, a_g = run_g(feats)
        m.add(a_f + a_g)
    return m.distance(st_f + st_g)


def _run(world, cat, task, s, seed, method, f, x, y=None, with_val=False) -> tuple[float, float]:
    """(test metric, transplant wall s) of one transplant."""
    _, g_t = world.teachers[cat][task]
    res = run_transplant(f, g_t, world.generic[task], x, y, method=method, adapter=dict(s["adapter"]),
                         train=_train_config(s, seed, with_val))
    with torch.no_grad():  # scored through the real f whatever space the adapter was trained in
        score = _score(world, cat, task, res.adapter)
    return score, res.metrics["wall_s"]


def run_cell(world, cat: str, task: str, s: dict) -> dict:
    """{"cols": {column: [metric per seed]}, "cost": {...}, "quality": {...}} for one cell."""
    f, g_t = world.teachers[cat][task]
    d = world.data[cat]
    cols: dict[str, list[float]] = {}
    cost: dict[str, list[float]] = {}
    quality: dict[str, list] = {"real": [_real_distance(f, g_t, d.unlabelled.x)]}
    for seed in s["seeds"]:
        pick = torch.randperm(len(d.train), generator=torch.Generator().manual_seed(seed))
        for n in s["labels"]:
            sub = d.train.take(pick[:n])
            cols.setdefault(f"sup {n}", []).append(_run(world, cat, task, s, seed, "supervised", f, sub.x,
                                                        sub.labels(task))[0])
        for m, short in SHORT.items():
            score, wall = _run(world, cat, task, s, seed, m, f, d.unlabelled.x, with_val=True)
            cols.setdefault(f"{short} all", []).append(score)
            cost.setdefault(f"{short} all", []).append(wall)
            for n in s["few"]:
                x = d.unlabelled.x[pick[:n] % len(d.unlabelled)]
                cols.setdefault(f"{short} {n}", []).append(_run(world, cat, task, s, seed, m, f, x)[0])
        for sm in s["synth_methods"]:
            v = s["synth_variants"][sm]
            cfg = SynthesisConfig(method=v["method"], n=v.get("n", s["synth_n"]), seed=seed,
                                  steps=v.get("steps", s["synth_steps"]), batch_size=s["synth_batch"])
            syn = synthesise(f, g_t, tuple(d.unlabelled.x.shape[1:]), cfg, feature_shape=world.feature_shape)
            quality.setdefault(sm, []).append(syn.report["bn_distance"])
            quality.setdefault(f"{sm} balance", []).append(syn.report["class_balance"])
            cost.setdefault(f"{sm} synth", []).append(syn.report["wall_s"])
            for m, short in SHORT.items():
                f_used, x = mix_real(f, syn, None)
                score, wall = _run(world, cat, task, s, seed, m, f_used, x, with_val=True)
                cols.setdefault(f"{short} {sm}", []).append(score)
                cost.setdefault(f"{short} {sm}", []).append(wall)
                for n in s["mix_few"] if v["mixed"] else []:
                    f_used, x = mix_real(f, syn, d.unlabelled.x[pick[:n] % len(d.unlabelled)])
                    score, _ = _run(world, cat, task, s, seed, m, f_used, x, with_val=True)
                    cols.setdefault(f"{short} {sm}+{n}", []).append(score)
    return {"cols": cols, "cost": cost, "quality": quality}


def _mean(v: list) -> float:
    return statistics.mean(v)


def headline(cells: dict, s: dict) -> list[str]:
    """The issue's goals, per synthesis method, as they came out."""
    lines = []
    sup = f"sup {s['labels'][-1]}"
    for sm in s["synth_methods"]:
        c = [cell["cols"] for cell in cells.values()]
        beat_sup = sum(_mean(x[f"bd {sm}"]) >= _mean(x[sup]) for x in c)
        beat_dist = sum(_mean(x[f"bd {sm}"]) >= _mean(x[f"dist {sm}"]) for x in c)
        margin_syn = _mean([_mean(x[f"bd {sm}"]) - _mean(x[f"dist {sm}"]) for x in c])
        margin_real = _mean([_mean(x["bd all"]) - _mean(x["dist all"]) for x in c])
        # Medians over seeds: one run slowed by a neighbour's job on the shared cores is not the cost.
        med = statistics.median
        ratios = [(med(cell["cost"][f"{sm} synth"]) + med(cell["cost"][f"bd {sm}"]))
                  / med(cell["cost"]["bd all"]) for cell in cells.values()]
        lines.append(
            f"- **{sm}**: data-free bd ≥ {sup} in {beat_sup}/{len(c)} cells; ≥ dist on the same synthetic "
            f"inputs in {beat_dist}/{len(c)} cells; mean margin bd − dist {margin_syn:+.3f} synthetic vs "
            f"{margin_real:+.3f} with all real inputs; (synthesis + transplant) / transplant from real "
            f"inputs = {statistics.median(ratios):.2f}× (median over cells of per-cell medians over seeds, "
            f"max {max(ratios):.2f}×)."
        )
    return lines


def write_report(cells: dict, s: dict, wall: float, out: Path) -> list[str]:
    """datafree.md: goals, tables, cost and quality, settings."""
    head = headline(cells, s)
    lines = ["# Data-free transplant (bench/science.py --datafree)", "", "Goals as they came out:", "", *head,
             "", "Metric: accuracy for `cls`, mIoU for `seg` on the new category's held-out test split; "
             f"mean ± std over seeds {s['seeds']}. `bd`/`dist` `<method>`: {s['synth_n']} synthetic inputs "
             "and no real one; `<method>+N`: the same synthetic inputs plus N real unlabelled inputs.", ""]
    sms = s["synth_methods"]
    tables = [
        ("Real inputs and labels (the rows data-free is compared with)",
         [f"sup {n}" for n in s["labels"]]
         + [f"{m} {n}" for n in [*s["few"], "all"] for m in ("dist", "bd")]),
        ("No real input at all: same synthetic inputs for both methods",
         [f"{m} {sm}" for sm in sms for m in ("dist", "bd")]),
    ]
    mixed = [sm for sm in sms if s["synth_variants"][sm]["mixed"]]
    for n in s["mix_few"]:
        tables.append((f"Synthetic inputs plus {n} real ones", [f"{m} {sm}+{n}" for sm in mixed
                                                               for m in ("dist", "bd")]))
    for title, cs in tables:
        lines += [f"## {title}", "", "| cell | " + " | ".join(cs) + " |", "|---|" + "---|" * len(cs)]
        lines += [f"| {k} | " + " | ".join(_fmt(c["cols"][x]) for x in cs) + " |" for k, c in cells.items()]
        lines.append("")
    qc = ["real", *sms]
    lines += ["## Synthesis quality and cost", "",
              "BatchNorm distance: mean over the teacher's BatchNorm layers of (‖μ − μ_stored‖ + "
              "‖σ − σ_stored‖) / ‖σ_stored‖ over the whole set (features: g_T's layers only); `real`: the "
              "real unlabelled inputs. Balance: entropy of the teacher's mean prediction / log K. "
              "Walls in seconds.", "",
              "| cell | " + " | ".join(f"dist. {q}" for q in qc) + " | "
              + " | ".join(f"balance {q}" for q in sms) + " | "
              + " | ".join(f"synth s {q}" for q in sms) + " | bd all s | "
              + " | ".join(f"bd {q} s" for q in sms) + " |",
              "|---|" + "---|" * (len(qc) + 3 * len(sms) + 1)]
    for k, c in cells.items():
        q, co = c["quality"], c["cost"]
        row = [_fmt(q[x]) for x in qc] + [_fmt(q[f"{x} balance"]) for x in sms]
        row += [_fmt(co[f"{x} synth"]) for x in sms] + [_fmt(co["bd all"])]
        row += [_fmt(co[f"bd {x}"]) for x in sms]
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    lines += ["", "## Settings", "", "```", json.dumps(s, indent=2), "```", "",
              f"Wall time: {wall:.0f} s on {torch.get_num_threads()} CPU threads.", ""]
    out.write_text("\n".join(lines) + "\n")
    return head


def plot(cells: dict, s: dict, out: Path) -> None:
    """Test metric against the number of real inputs (0 = synthetic only; 'all' real), per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(cells)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.2), squeeze=False)
    ticks = [0, *s["mix_few"], "all"]
    xs = list(range(len(ticks)))
    for ax, key in zip(axes[0], keys, strict=True):
        cols = cells[key]["cols"]
        for short, style in (("bd", "-"), ("dist", "--")):
            real = [None, *(_mean(cols[f"{short} {n}"]) for n in s["mix_few"]), _mean(cols[f"{short} all"])]
            ax.plot(xs[1:], real[1:], style, marker="o", color="k", label=f"{short} real only")
            for i, sm in enumerate(s["synth_methods"]):
                if not s["synth_variants"][sm]["mixed"]:
                    ax.plot([0], [_mean(cols[f"{short} {sm}"])], marker="x" if short == "bd" else "+",
                            color=f"C{i}", ls="none", label=f"{short} {sm}")
                    continue
                ys = [_mean(cols[f"{short} {sm}"]), *(_mean(cols[f"{short} {sm}+{n}"]) for n in s["mix_few"]),
                      _mean(cols[f"{short} all"])]
                ax.plot(xs, ys, style, marker="o", color=f"C{i}", label=f"{short} {sm} + real")
        ax.axhline(_mean(cols[f"sup {s['labels'][-1]}"]), color="grey", ls=":", lw=1,
                   label=f"sup {s['labels'][-1]} labels")
        ax.set_xticks(xs, [str(t) for t in ticks])
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("real inputs (0 = synthetic only)")
    axes[0][0].set_ylabel("test metric")
    axes[0][-1].legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(quick: bool, out: Path, worlds: list[str] | None = None) -> dict:
    """Run the data-free rows; writes datafree[_quick].{md,json,png} under `out`."""
    s = settings(quick)
    if worlds:
        s["worlds"] = worlds
    t0 = time.perf_counter()
    cells: dict = {}
    for name in s["worlds"]:
        world = build_world(seed=0, size=s["size"], name=name)
        s[f"n_unlab_{name}"] = world.info["n_unlab"]
        print(f"world {name}: built in {time.perf_counter() - t0:.0f} s", flush=True)
        for cat in world.new_categories:
            for task in world.tasks:
                key = f"{name} / {cat} / {task}"
                cells[key] = run_cell(world, cat, task, s)
                print(f"{key} ({time.perf_counter() - t0:.0f} s): "
                      + ", ".join(f"{k}={_fmt(v)}" for k, v in cells[key]["cols"].items()), flush=True)
                head = _write(cells, s, time.perf_counter() - t0, out, quick)  # after every cell
    print("\n".join(head))
    return cells


def _write(cells: dict, s: dict, wall: float, out: Path, quick: bool) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if quick else ""
    (out / f"datafree{suffix}.json").write_text(json.dumps({"cells": cells, "settings": s, "wall_s": wall},
                                                            indent=1))
    plot(cells, s, out / f"datafree{suffix}.png")
    return write_report(cells, s, wall, out / f"datafree{suffix}.md")
