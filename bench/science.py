"""The paper's comparison on our world and on scikit-learn digits: python -m bench.science [--quick | --smoke]
[--datafree].

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

`--datafree` (`make bench-datafree`): the data-free rows instead, on the same worlds, new categories,
tasks, seeds, settings and held-out test splits. Per cell and seed: the real-input rows they are
compared with (supervised 100 labels; distillation and back-distillation on 8/32/128/all real
unlabelled inputs), then for each synthesis method (transplant/synth.py) back-distillation and plain
distillation fed the *same* synthetic inputs, alone (0 real inputs) and (deepinversion) mixed with
8/32/128 real ones; "di-cheap" is deepinversion with half the inputs and half the steps (the wall-time
goal). Synthesis cost (wall) and quality (distance of the synthetic set's BatchNorm statistics to the
stored ones, beside the real inputs' own distance) are kept per cell. Writes
bench/results/datafree.{md,json,png}.
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
from transplant.synth import SynthesisConfig, bn_distance, mix_real, synthesise
from transplant.world import SIZES, build_world

SMOKE_SIZE = {"n_old": 1, "n_new": 1, "n_train": 48, "n_unlab": 24, "n_test": 16, "steps": 2, "gen_steps": 2}
"""The world of `--smoke` (CI's seconds-long pass through the whole benchmark)."""
RESULTS = Path(__file__).parent / "results"
LABELS = (10, 20, 50, 100)
FEW = (8, 32, 128)
SHORT = {"distillation": "dist", "back_distillation": "bd"}
# Data-free rows: (name, synthesis method, overrides of the synthesis settings, mixed with real inputs too)
VARIANTS = (
    ("deepinversion", "deepinversion", {}, True),
    ("features", "features", {}, False),
    ("noise", "noise", {}, False),
    ("di-cheap", "deepinversion", {"n": 128, "steps": 100}, False),
)


# ---- The cost of one step ----------------------------------------------------------------------------

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


# ---- Settings and runs -------------------------------------------------------------------------------

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


def datafree_settings(quick: bool) -> dict:
    """The settings above plus the synthesis's, written into the data-free report."""
    s = settings(quick)
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
    """Test metric of adapter h, scored through the real f whatever space it was trained in."""
    f, _ = world.teachers[cat][task]
    te = world.data[cat].test
    with torch.no_grad():
        return task_metric(world.generic[task](h(f(te.x))), te.labels(task))["task_metric"]


def _transplant(world, cat, task, s, seed, method, f, x, y=None, with_val=False) -> tuple[float, float]:
    """(test metric, transplant wall s) of one transplant."""
    _, g_t = world.teachers[cat][task]
    res = run_transplant(f, g_t, world.generic[task], x, y, method=method, adapter=dict(s["adapter"]),
                         train=_train_config(s, seed, with_val))
    return _score(world, cat, task, res.adapter), res.metrics["wall_s"]


def _real_rows(world, cat: str, task: str, s: dict, seed: int, pick: torch.Tensor):
    """(column, test metric, wall s) of the real-input rows of one seed: supervised with labels,
    distillation and back-distillation on all the unlabelled inputs and on few of them."""
    f, _ = world.teachers[cat][task]
    d = world.data[cat]
    for n in s["labels"]:
        sub = d.train.take(pick[:n])
        yield (f"sup {n}", *_transplant(world, cat, task, s, seed, "supervised", f, sub.x, sub.labels(task)))
    for m, short in SHORT.items():
        yield (f"{short} all", *_transplant(world, cat, task, s, seed, m, f, d.unlabelled.x, with_val=True))
        for n in s["few"]:
            x = d.unlabelled.x[pick[:n] % len(d.unlabelled)]
            yield (f"{short} {n}", *_transplant(world, cat, task, s, seed, m, f, x))


def _pick(world, cat: str, seed: int) -> torch.Tensor:
    d = world.data[cat]
    return torch.randperm(len(d.train), generator=torch.Generator().manual_seed(seed))


def run_cell(world, cat: str, task: str, s: dict) -> dict[str, list[float]]:
    """All methods × data regimes × seeds on one cell: {column: [test metric per seed]}."""
    f, g_t = world.teachers[cat][task]
    g_s = world.generic[task]
    te = world.data[cat].test
    with torch.no_grad():
        cols: dict[str, list[float]] = {
            "teacher": [task_metric(g_t(f(te.x)), te.labels(task))["task_metric"]],
            "no adapter": [task_metric(g_s(f(te.x)), te.labels(task))["task_metric"]],
        }
    for seed in s["seeds"]:
        for col, score, _ in _real_rows(world, cat, task, s, seed, _pick(world, cat, seed)):
            cols.setdefault(col, []).append(score)
    return cols


def run_datafree_cell(world, cat: str, task: str, s: dict) -> dict:
    """{"cols": {column: [metric per seed]}, "cost": {...}, "quality": {...}} for one data-free cell."""
    f, g_t = world.teachers[cat][task]
    d = world.data[cat]
    cols: dict[str, list[float]] = {}
    cost: dict[str, list[float]] = {}
    quality: dict[str, list] = {"real": [bn_distance(f, g_t, d.unlabelled.x)]}
    for seed in s["seeds"]:
        pick = _pick(world, cat, seed)
        for col, score, wall in _real_rows(world, cat, task, s, seed, pick):
            cols.setdefault(col, []).append(score)
            if col.endswith(" all"):
                cost.setdefault(col, []).append(wall)
        for sm in s["synth_methods"]:
            v = s["synth_variants"][sm]
            cfg = SynthesisConfig(method=v["method"], n=v.get("n", s["synth_n"]), seed=seed,
                                  steps=v.get("steps", s["synth_steps"]), batch_size=s["synth_batch"])
            syn = synthesise(f, g_t, tuple(d.unlabelled.x.shape[1:]), cfg, feature_shape=world.feature_shape)
            quality.setdefault(sm, []).append(syn.report["bn_distance"])
            quality.setdefault(f"{sm} balance", []).append(syn.report["class_balance"])
            cost.setdefault(f"{sm} synth", []).append(syn.report["wall_s"])
            f_syn, x_syn = mix_real(f, syn, None)
            for m, short in SHORT.items():
                score, wall = _transplant(world, cat, task, s, seed, m, f_syn, x_syn, with_val=True)
                cols.setdefault(f"{short} {sm}", []).append(score)
                cost.setdefault(f"{short} {sm}", []).append(wall)
                for n in s["mix_few"] if v["mixed"] else []:
                    f_used, x = mix_real(f, syn, d.unlabelled.x[pick[:n] % len(d.unlabelled)])
                    score, _ = _transplant(world, cat, task, s, seed, m, f_used, x, with_val=True)
                    cols.setdefault(f"{short} {sm}+{n}", []).append(score)
    return {"cols": cols, "cost": cost, "quality": quality}


# ---- Reports -----------------------------------------------------------------------------------------

def _mean(v: list) -> float:
    return statistics.mean(v)


def _fmt(v: list[float]) -> str:
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


def _table(title: str, first: str, cs: list[str], rows: dict[str, dict[str, list]]) -> list[str]:
    """A section with one markdown table: a row per cell, mean ± std per column."""
    return [f"## {title}", "", f"| {first} | " + " | ".join(cs) + " |", "|---|" + "---|" * len(cs),
            *(f"| {k} | " + " | ".join(_fmt(cols[c]) for c in cs) + " |" for k, cols in rows.items()), ""]


def _settings_section(s: dict, wall: float) -> list[str]:
    return ["## Settings", "", "```", json.dumps(s, indent=2), "```", "",
            f"Wall time: {wall:.0f} s on {torch.get_num_threads()} CPU threads.", ""]


def write_report(cells: dict, s: dict, cost: dict, wall: float, out: Path) -> str:
    """Markdown tables, headline counts and the settings used."""
    main_cols = ["teacher", "no adapter", *[f"sup {n}" for n in s["labels"]], "dist all", "bd all"]
    few_cols = [f"{m} {n}" for n in s["few"] for m in ("dist", "bd")]
    sup = f"sup {s['labels'][-1]}"
    wins_sup = sum(_mean(c["bd all"]) >= _mean(c[sup]) for c in cells.values())
    wins_dist = sum(_mean(c["bd all"]) >= _mean(c["dist all"]) for c in cells.values())
    gap = _mean([_mean(c["bd all"]) - _mean(c["dist all"]) for c in cells.values()])
    total, first = len(cells), "world / category / task"
    head = (
        f"**Headline**: back-distillation with no labels ≥ supervised with {s['labels'][-1]} labels in "
        f"{wins_sup}/{total} cells; ≥ plain distillation in {wins_dist}/{total} cells "
        f"(mean difference bd − dist = {gap:+.3f}). "
        f"One back-distillation step costs {cost['time_ratio']:.2f}× a distillation step; "
        f"saved-activation memory {cost['memory_ratio']:.2f}×."
    )
    lines = ["# Back-distillation vs. baselines (bench/science.py)", "", head, "",
             "Metric: accuracy for `cls`, mIoU for `seg`, on the new category's test split; "
             f"mean ± std over seeds {s['seeds']}.", "",
             *_table("No labels (all unlabelled inputs) vs. labels", first, main_cols, cells),
             *_table("Few unlabelled inputs", first, few_cols, cells),
             "## Cost of one step (same batch, side by side)", "",
             "```", json.dumps(cost, indent=2), "```", "",
             *_settings_section(s, wall)]
    out.write_text("\n".join(lines) + "\n")
    return head


def datafree_headline(cells: dict, s: dict) -> list[str]:
    """The data-free goals, per synthesis method, as they came out."""
    lines = []
    sup = f"sup {s['labels'][-1]}"
    c = [cell["cols"] for cell in cells.values()]
    margin_real = _mean([_mean(x["bd all"]) - _mean(x["dist all"]) for x in c])
    for sm in s["synth_methods"]:
        beat_sup = sum(_mean(x[f"bd {sm}"]) >= _mean(x[sup]) for x in c)
        beat_dist = sum(_mean(x[f"bd {sm}"]) >= _mean(x[f"dist {sm}"]) for x in c)
        margin_syn = _mean([_mean(x[f"bd {sm}"]) - _mean(x[f"dist {sm}"]) for x in c])
        # Medians over seeds: one run slowed by a neighbour's job on the shared cores is not the cost.
        med = statistics.median
        ratios = [(med(cell["cost"][f"{sm} synth"]) + med(cell["cost"][f"bd {sm}"]))
                  / med(cell["cost"]["bd all"]) for cell in cells.values()]
        lines.append(
            f"- **{sm}**: data-free bd ≥ {sup} in {beat_sup}/{len(c)} cells; ≥ dist on the same synthetic "
            f"inputs in {beat_dist}/{len(c)} cells; mean margin bd − dist {margin_syn:+.3f} synthetic vs "
            f"{margin_real:+.3f} with all real inputs; (synthesis + transplant) / transplant from real "
            f"inputs = {med(ratios):.2f}× (median over cells of per-cell medians over seeds, "
            f"max {max(ratios):.2f}×)."
        )
    return lines


def write_datafree_report(cells: dict, s: dict, wall: float, out: Path) -> list[str]:
    """datafree.md: goals, tables, cost and quality, settings."""
    head = datafree_headline(cells, s)
    lines = ["# Data-free transplant (bench/science.py --datafree)", "", "Goals as they came out:", "", *head,
             "", "Metric: accuracy for `cls`, mIoU for `seg` on the new category's held-out test split; "
             f"mean ± std over seeds {s['seeds']}. `bd`/`dist` `<method>`: {s['synth_n']} synthetic inputs "
             "and no real one; `<method>+N`: the same synthetic inputs plus N real unlabelled inputs.", ""]
    sms = s["synth_methods"]
    mixed = [sm for sm in sms if s["synth_variants"][sm]["mixed"]]
    rows = {k: c["cols"] for k, c in cells.items()}
    lines += _table("Real inputs and labels (the rows data-free is compared with)", "cell",
                    [f"sup {n}" for n in s["labels"]]
                    + [f"{m} {n}" for n in [*s["few"], "all"] for m in ("dist", "bd")], rows)
    lines += _table("No real input at all: same synthetic inputs for both methods", "cell",
                    [f"{m} {sm}" for sm in sms for m in ("dist", "bd")], rows)
    for n in s["mix_few"]:
        lines += _table(f"Synthetic inputs plus {n} real ones", "cell",
                        [f"{m} {sm}+{n}" for sm in mixed for m in ("dist", "bd")], rows)
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
    lines += ["", *_settings_section(s, wall)]
    out.write_text("\n".join(lines) + "\n")
    return head


def _figure(keys: list[str], width: float, height: float):
    """A row of axes, one per cell, titled with the cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(width * len(keys), height), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.set_title(key, fontsize=8)
    return fig, axes[0]


def _save(fig, axes, out: Path, legend_size: int) -> None:
    import matplotlib.pyplot as plt

    axes[0].set_ylabel("test metric")
    axes[-1].legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot(cells: dict, s: dict, out: Path) -> None:
    """Score vs. number of samples (labels for supervised, unlabelled inputs for the others)."""
    fig, axes = _figure(list(cells), 3.2, 3)
    n_all = s.get("n_unlab", 512)
    for ax, cols in zip(axes, cells.values(), strict=True):
        ax.plot(s["labels"], [_mean(cols[f"sup {n}"]) for n in s["labels"]], marker="o",
                label="supervised (labels)")
        for prefix, label in (("dist", "distillation"), ("bd", "back-distillation")):
            means = [_mean(cols[f"{prefix} {n}"]) for n in s["few"]] + [_mean(cols[f"{prefix} all"])]
            ax.plot([*s["few"], n_all], means, marker="o", label=label)
        ax.axhline(cols["teacher"][0], color="k", ls="--", lw=1, label="teacher")
        ax.set_xscale("log")
        ax.set_xlabel("samples")
    _save(fig, axes, out, 6)


def plot_datafree(cells: dict, s: dict, out: Path) -> None:
    """Test metric against the number of real inputs (0 = synthetic only; 'all' real), per method."""
    fig, axes = _figure(list(cells), 3.3, 3.2)
    ticks = [0, *s["mix_few"], "all"]
    xs = list(range(len(ticks)))
    for ax, cell in zip(axes, cells.values(), strict=True):
        cols = cell["cols"]
        for short, style in (("bd", "-"), ("dist", "--")):
            real = [_mean(cols[f"{short} {n}"]) for n in s["mix_few"]] + [_mean(cols[f"{short} all"])]
            ax.plot(xs[1:], real, style, marker="o", color="k", label=f"{short} real only")
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
        ax.set_xlabel("real inputs (0 = synthetic only)")
    _save(fig, axes, out, 5)


# ---- Entry point -------------------------------------------------------------------------------------

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


def _worlds(s: dict, t0: float, datafree: bool):
    """(name, world) for each world of the settings, built in turn; records its unlabelled count."""
    for name in s["worlds"]:
        world = build_world(seed=0, size=s["size"], name=name)
        s[f"n_unlab_{name}" if datafree else "n_unlab"] = world.info["n_unlab"]
        print(f"world {name}: built in {time.perf_counter() - t0:.0f} s", flush=True)
        yield name, world


def run_datafree(s: dict, out: Path, suffix: str) -> dict:
    """The data-free rows; rewrites datafree{suffix}.{md,json,png} under `out` after every cell."""
    t0 = time.perf_counter()
    cells: dict = {}
    for name, world in _worlds(s, t0, datafree=True):
        for cat in world.new_categories:
            for task in world.tasks:
                key = f"{name} / {cat} / {task}"
                cells[key] = run_datafree_cell(world, cat, task, s)
                print(f"{key} ({time.perf_counter() - t0:.0f} s): "
                      + ", ".join(f"{k}={_fmt(v)}" for k, v in cells[key]["cols"].items()), flush=True)
                wall = time.perf_counter() - t0
                out.mkdir(parents=True, exist_ok=True)
                (out / f"datafree{suffix}.json").write_text(
                    json.dumps({"cells": cells, "settings": s, "wall_s": wall}, indent=1))
                plot_datafree(cells, s, out / f"datafree{suffix}.png")
                head = write_datafree_report(cells, s, wall, out / f"datafree{suffix}.md")
    print("\n".join(head))
    return cells


def main(argv: list[str] | None = None) -> dict:
    """Run the study; returns the cells."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a short run (small world, few steps)")
    p.add_argument("--smoke", action="store_true",
                   help="a seconds-long pass for CI: a shrunken shapes world, 2 steps (implies --quick)")
    p.add_argument("--datafree", action="store_true",
                   help="the data-free rows instead: datafree.md/json/png")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the results go (default bench/results)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worlds", nargs="*", default=None, help="subset of worlds (default: all)")
    p.add_argument("--save-cells", type=Path, default=None, help="also dump raw cells + cost as JSON")
    p.add_argument(
        "--assemble", type=Path, nargs="*", default=None, help="only write the report from JSON dumps"
    )
    args = p.parse_args(argv)
    if args.assemble:
        return assemble(args.assemble, args.out, args.quick)
    torch.set_num_threads(args.threads)
    args.quick = args.quick or args.smoke
    suffix = "_quick" if args.quick else ""
    s = datafree_settings(args.quick) if args.datafree else settings(args.quick)
    if args.smoke:
        SIZES["small"] = SMOKE_SIZE
        s.update(seeds=[0], labels=[10], few=[8], steps=2, steps_per_epoch=2, worlds=["shapes"])
        if args.datafree:
            s.update(synth_n=8, synth_steps=2, mix_few=[8])
            s["synth_variants"]["di-cheap"].update(n=8, steps=2)
    if args.worlds:
        s["worlds"] = args.worlds
    if args.datafree:
        return run_datafree(s, args.out, suffix)
    t0 = time.perf_counter()
    cells: dict = {}
    cost: dict = {}
    for name, world in _worlds(s, t0, datafree=False):
        for cat in world.new_categories:
            for task in world.tasks:
                cells[f"{name} / {cat} / {task}"] = cols = run_cell(world, cat, task, s)
                print(f"{name}/{cat}/{task}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in cols.items()),
                      flush=True)
        if not cost:
            cost = world_step_cost(world, reps=1 if args.smoke else 3 if args.quick else 20,
                                   batch_size=8 if args.smoke else 64)
    wall = time.perf_counter() - t0
    if args.save_cells:
        args.save_cells.write_text(json.dumps({"cells": cells, "settings": s, "cost": cost, "wall_s": wall}))
    args.out.mkdir(parents=True, exist_ok=True)
    head = write_report(cells, s, cost, wall, args.out / f"science{suffix}.md")
    plot(cells, s, args.out / f"science{suffix}.png")
    print(head)
    return cells


if __name__ == "__main__":
    main()
