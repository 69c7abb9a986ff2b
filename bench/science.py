"""The paper's comparison on our world and on scikit-learn digits: python -m bench.science [--quick].

For each new category × task: the teacher's score; the adapter trained `supervised` with 10/20/50/100
labels; `distillation` and `back_distillation` with no labels (all unlabelled inputs) and with few
unlabelled inputs (8/32/128). Several seeds, mean ± std. Plus the cost of one back-distillation step
against one distillation step on the same batch. Writes bench/results/science.md and science.png.

The cost rows (`step_cost`): one back-distillation step vs. one distillation step on the same batch,
as run_transplant trains them, both from the same fixed features (f is never run while training). The
distillation step is g_S(h(x)) against stored teacher outputs; the back-distillation step uses stored
teacher outputs, probes and teacher VJPs, g_S's VJP at the detached adapter output and a double
backward through h alone. A third row times the estimator it replaced, which differentiates through g_S
as well (`student_curvature=True`: what a smooth task module still needs).
`--datafree`: the data-free rows instead (bench/science_datafree.py, bench/results/datafree.*).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from transplant import TrainConfig, run_transplant
from transplant.adapters import build_adapter, fit_adapter_config, init_adapter
from transplant.blackbox import frozen
from transplant.distill.losses import back_distillation_loss, distillation_loss, teacher_probes
from transplant.metrics import task_metric
from transplant.world import SIZES, build_world

SMOKE_SIZE = {"n_old": 1, "n_new": 1, "n_train": 48, "n_unlab": 24, "n_test": 16, "steps": 2, "gen_steps": 2}
"""The world of `--smoke` (CI's seconds-long pass through the whole benchmark)."""

def _saved_bytes(fn) -> int:
    """Bytes of tensors autograd saves for backward during fn() (a CPU proxy of activation memory)."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _peak_cuda_bytes(fn, device: torch.device) -> int:
    """Peak CUDA memory allocated during fn(), above what was allocated before it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def step_cost(f, g_t, g_s, x: torch.Tensor, *, reps: int = 20, device: str = "cpu", cell: str = "",
              output_loss: str = "auto", probe_pool: int = 4) -> dict:
    """Median wall time and memory of the steps on batch x (N, ...), interleaved to share noise."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    with frozen(f, g_t, g_s, device=dev), torch.no_grad():
        feats = f(x.to(dev))  # (B, ...): every step starts from the same fixed features
    shape = tuple(feats.shape[1:])
    cfg = fit_adapter_config(shape, shape)  # both worlds cut where f's output is g_S's input
    h = build_adapter(cfg).to(dev)
    init_adapter(h, cfg, feats)
    opt = torch.optim.Adam(h.parameters(), lr=1e-3)
    with frozen(g_t, g_s, device=dev):
        teacher = teacher_probes(g_t, feats, probe_pool)

        def dist_step() -> None:
            loss = distillation_loss(g_s(h(feats)), teacher.y, output_loss, 2.0)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def bd_step(curvature: bool = False) -> None:
            t = back_distillation_loss(feats, h, g_s, g_t, output_loss=output_loss, temperature=2.0,
                                       teacher=teacher, student_curvature=curvature)
            opt.zero_grad()
            t.loss.backward()
            opt.step()

        steps = {"dist": dist_step, "bd": bd_step, "bd_through_g_s": lambda: bd_step(True)}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for fn in steps.values():  # warm-up
            fn()
        for _ in range(reps):
            for name, fn in steps.items():
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize(dev)
                times[name].append(time.perf_counter() - t0)
        if cuda:
            mem = {k: _peak_cuda_bytes(fn, dev) for k, fn in steps.items()}
            measure = "peak CUDA memory allocated during the step, above the step's inputs"
        else:
            mem = {k: _saved_bytes(fn) for k, fn in steps.items()}
            measure = "bytes of tensors saved for backward (autograd saved_tensors_hooks), CPU"
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    batch = x.shape[0]
    return {
        "cell": cell,
        "device": str(dev),
        "batch_size": batch,
        "dist_step_ms": round(med["dist"] * 1e3, 2),
        "bd_step_ms": round(med["bd"] * 1e3, 2),
        "bd_through_g_s_step_ms": round(med["bd_through_g_s"] * 1e3, 2),
        "dist_steps_per_s": 1 / med["dist"],
        "bd_steps_per_s": 1 / med["bd"],
        "time_ratio": med["bd"] / med["dist"],
        "time_ratio_through_g_s": med["bd_through_g_s"] / med["dist"],
        "dist_memory_bytes": mem["dist"],
        "bd_memory_bytes": mem["bd"],
        "memory_ratio": mem["bd"] / max(mem["dist"], 1),
        "memory_measure": measure,
    }


def world_step_cost(world, reps: int = 20, batch_size: int = 64, device: str = "cpu") -> dict:
    """step_cost on the benchmark world's first new category, segmentation task."""
    cat, task = world.new_categories[0], "seg"
    f, g_t = world.teachers[cat][task]
    x = world.data[cat].unlabelled.x[:batch_size]
    return step_cost(f, g_t, world.generic[task], x, reps=reps, device=device,
                     cell=f"{world.name}/{cat}/{task}")


RESULTS = Path(__file__).parent / "results"
LABELS = (10, 20, 50, 100)
FEW = (8, 32, 128)
METHOD_SHORT = {"supervised": "sup", "distillation": "dist", "back_distillation": "bd"}


def settings(quick: bool) -> dict:
    """Everything that decides the numbers, written into the report."""
    return {
        "size": "small" if quick else "full",
        "worlds": ["shapes", "digits"],
        "seeds": [0, 1] if quick else [0, 1, 2],
        "labels": [10, 100] if quick else list(LABELS),
        "few": [8] if quick else list(FEW),
        "steps": 10 if quick else 200,
        "steps_per_epoch": 5 if quick else 20,
        "batch_size": 32,
        "lr": 3e-3,
        "val_fraction_all": 0.15,
        "patience": 15 if quick else 60,
        "lambda_jac": 1.0,
        "probes": 1,
        "normalise": "probe",
        # The service's defaults for the rest: output loss "auto" (KL on class logits, MSE on maps), a
        # two-layer 3×3 adapter with a linear shortcut and per-channel normalisation, a pool of 4 probes.
        "output_loss": "auto",
        "adapter": {},
    }


def _train_config(s: dict, seed: int, with_val: bool) -> TrainConfig:
    return TrainConfig(
        steps=s["steps"],
        steps_per_epoch=s["steps_per_epoch"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        seed=seed,
        val_fraction=s["val_fraction_all"] if with_val else 0.0,
        patience=s["patience"],
        lambda_jac=s["lambda_jac"],
        probes=s["probes"],
        normalise=s["normalise"],
        output_loss=s["output_loss"],
    )


def _score(world, cat: str, task: str, h) -> float:
    f, _ = world.teachers[cat][task]
    te = world.data[cat].test
    with torch.no_grad():
        return task_metric(world.generic[task](h(f(te.x))), te.labels(task))["task_metric"]


def run_cell(world, cat: str, task: str, s: dict) -> dict[str, list[float]]:
    """All methods × data regimes × seeds on one cell: {column: [test metric per seed]}."""
    f, g_t = world.teachers[cat][task]
    g_s = world.generic[task]
    d = world.data[cat]
    te = d.test
    with torch.no_grad():
        cols: dict[str, list[float]] = {
            "teacher": [task_metric(g_t(f(te.x)), te.labels(task))["task_metric"]]
        }
        cols["no adapter"] = [task_metric(g_s(f(te.x)), te.labels(task))["task_metric"]]
    for seed in s["seeds"]:
        pick = torch.randperm(len(d.train), generator=torch.Generator().manual_seed(seed))
        runs = [("supervised", f"sup {n}", d.train.take(pick[:n]), True, False) for n in s["labels"]]
        for m in ("distillation", "back_distillation"):
            runs.append((m, f"{METHOD_SHORT[m]} all", d.unlabelled, False, True))
            for n in s["few"]:
                runs.append(
                    (
                        m,
                        f"{METHOD_SHORT[m]} {n}",
                        d.unlabelled.take(pick[:n] % len(d.unlabelled)),
                        False,
                        False,
                    )
                )
        for method, col, samples, labelled, with_val in runs:
            y = samples.labels(task) if labelled else None
            res = run_transplant(
                f,
                g_t,
                g_s,
                samples.x,
                y,
                method=method,
                adapter=dict(s["adapter"]),
                train=_train_config(s, seed, with_val),
            )
            cols.setdefault(col, []).append(_score(world, cat, task, res.adapter))
    return cols


def _fmt(v: list[float]) -> str:
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


def write_report(cells: dict, s: dict, cost: dict, wall: float, out: Path) -> str:
    """Markdown tables, headline counts and the settings used."""
    main_cols = ["teacher", "no adapter", *[f"sup {n}" for n in s["labels"]], "dist all", "bd all"]
    few_cols = [f"{m} {n}" for n in s["few"] for m in ("dist", "bd")]
    lines = ["# Back-distillation vs. baselines (bench/science.py)", ""]
    wins_sup = wins_dist = total = 0
    gaps = []
    for cols in cells.values():
        bd, sup100, dist = (
            statistics.mean(cols[c]) for c in ("bd all", f"sup {s['labels'][-1]}", "dist all")
        )
        total += 1
        wins_sup += bd >= sup100
        wins_dist += bd >= dist
        gaps.append(bd - dist)
    head = (
        f"**Headline**: back-distillation with no labels ≥ supervised with {s['labels'][-1]} labels in "
        f"{wins_sup}/{total} cells; ≥ plain distillation in {wins_dist}/{total} cells "
        f"(mean difference bd − dist = {statistics.mean(gaps):+.3f}). "
        f"One back-distillation step costs {cost['time_ratio']:.2f}× a distillation step; "
        f"saved-activation memory {cost['memory_ratio']:.2f}×."
    )
    lines += [
        head,
        "",
        "Metric: accuracy for `cls`, mIoU for `seg`, on the new category's test split; "
        f"mean ± std over seeds {s['seeds']}.",
        "",
    ]
    for title, cs in (
        ("No labels (all unlabelled inputs) vs. labels", main_cols),
        ("Few unlabelled inputs", few_cols),
    ):
        lines += [
            f"## {title}",
            "",
            "| world / category / task | " + " | ".join(cs) + " |",
            "|---|" + "---|" * len(cs),
        ]
        for key, cols in cells.items():
            lines.append(f"| {key} | " + " | ".join(_fmt(cols[c]) for c in cs) + " |")
        lines.append("")
    lines += [
        "## Cost of one step (same batch, side by side)",
        "",
        "```",
        json.dumps(cost, indent=2),
        "```",
        "",
        "## Settings",
        "",
        "```",
        json.dumps(s, indent=2),
        "```",
        "",
        f"Wall time: {wall:.0f} s on {torch.get_num_threads()} CPU threads.",
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text + "\n")
    return head


def plot(cells: dict, s: dict, out: Path) -> None:
    """Score vs. number of samples (labels for supervised, unlabelled inputs for the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(cells)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        cols = cells[key]
        n_all = s.get("n_unlab", 512)
        for prefix, label, xs in (
            ("sup", "supervised (labels)", s["labels"]),
            ("dist", "distillation", [*s["few"], n_all]),
            ("bd", "back-distillation", [*s["few"], n_all]),
        ):
            names = (
                [f"{prefix} {n}" for n in xs]
                if prefix == "sup"
                else [f"{prefix} {n}" for n in s["few"]] + [f"{prefix} all"]
            )
            means = [statistics.mean(cols[c]) for c in names]
            ax.plot(xs, means, marker="o", label=label)
        ax.axhline(cols["teacher"][0], color="k", ls="--", lw=1, label="teacher")
        ax.set_xscale("log")
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("samples")
    axes[0][0].set_ylabel("test metric")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def assemble(paths: list[Path], out: Path, quick: bool) -> dict:
    """Merge JSON dumps of separate runs (e.g. one per world) into one report; walls are summed."""
    dumps = [json.loads(p.read_text()) for p in paths]
    cells = {k: v for d in dumps for k, v in d["cells"].items()}
    s = dict(dumps[0]["settings"], worlds=[w for d in dumps for w in d["settings"]["worlds"]])
    cost = next(d["cost"] for d in dumps if d["cost"])
    suffix = "_quick" if quick else ""
    out.mkdir(parents=True, exist_ok=True)
    print(write_report(cells, s, cost, sum(d["wall_s"] for d in dumps), out / f"science{suffix}.md"))
    plot(cells, s, out / f"science{suffix}.png")
    return cells


def main(argv: list[str] | None = None) -> dict:
    """Run the study; returns the cells."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a short run (small world, few steps)")
    p.add_argument("--smoke", action="store_true",
                   help="a seconds-long pass for CI: a shrunken shapes world, 2 steps (implies --quick)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where science.md / science.png go")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worlds", nargs="*", default=None, help="subset of worlds (default: all)")
    p.add_argument("--save-cells", type=Path, default=None, help="also dump raw cells + cost as JSON")
    p.add_argument(
        "--assemble", type=Path, nargs="*", default=None, help="only write the report from JSON dumps"
    )
    p.add_argument("--datafree", action="store_true",
                   help="only the data-free rows (bench/science_datafree.py): datafree.md/json/png")
    args = p.parse_args(argv)
    if args.datafree:
        from bench import science_datafree

        torch.set_num_threads(args.threads)
        return science_datafree.main(args.quick, args.out, args.worlds)
    if args.assemble:
        return assemble(args.assemble, args.out, args.quick)
    torch.set_num_threads(args.threads)
    args.quick = args.quick or args.smoke
    s = settings(args.quick)
    if args.smoke:
        SIZES["small"] = SMOKE_SIZE
        s.update(seeds=[0], labels=[10], few=[8], steps=2, steps_per_epoch=2, worlds=["shapes"])
    if args.worlds:
        s["worlds"] = args.worlds
    t0 = time.perf_counter()
    cells: dict = {}
    cost: dict = {}
    for name in s["worlds"]:
        world = build_world(seed=0, size=s["size"], name=name)
        s["n_unlab"] = world.info["n_unlab"]
        print(f"world {name}: built in {time.perf_counter() - t0:.0f} s", flush=True)
        for cat in world.new_categories:
            for task in world.tasks:
                cells[f"{name} / {cat} / {task}"] = cols = run_cell(world, cat, task, s)
                print(
                    f"{name}/{cat}/{task}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in cols.items()),
                    flush=True,
                )
        if not cost:
            cost = world_step_cost(world, reps=1 if args.smoke else 3 if args.quick else 20,
                                   batch_size=8 if args.smoke else 64)
    wall = time.perf_counter() - t0
    if args.save_cells:
        args.save_cells.write_text(json.dumps({"cells": cells, "settings": s, "cost": cost, "wall_s": wall}))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    head = write_report(cells, s, cost, wall, args.out / f"science{suffix}.md")
    plot(cells, s, args.out / f"science{suffix}.png")
    print(head)
    return cells


if __name__ == "__main__":
    main()
