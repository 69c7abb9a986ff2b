"""Knowledge amalgamation benchmark: student vs each teacher, vs an oracle with labels, vs logit distillation.

    python -m bench.amalgamation [--quick] [--seeds 3]

Studies: scikit-learn digits split between 2 and 4 teachers (disjoint classes, each teacher trained on its
own classes only) and, when `transplant.world` is importable, its "shapes" world (one teacher per style,
classes = style × shape). Writes bench/results/amalgamation.{json,md}; the md's "## Commentary" is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from transplant.amalgamate import (
    AmalgamationConfig,
    StudentConfig,
    StudentFeatures,
    Teacher,
    amalgamate,
    build_head,
    count_params,
    distill_logits_baseline,
    merged_logits,
)

RESULTS = Path(__file__).parent / "results"
DIGIT_TEACHERS = [((32, 64), (2, 2)), ((16, 32, 64), (2, 1, 2))]  # alternated: widths and depths differ


def _stage(c_in: int, c_out: int, pool: int, last: bool) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    mods += [nn.MaxPool2d(pool)] if pool > 1 else []
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if last else []
    return nn.Sequential(*mods)


def _fit(modules: list[nn.Module], forward, x, y, epochs: int, seed: int) -> None:
    """Cross-entropy training with labels (teachers and the oracle only)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = nn.functional.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for m in modules:
        m.eval()


def digits_teacher(x, y, classes: list[int], arch, epochs: int, seed: int) -> Teacher:
    """A conv teacher trained on the samples of its own classes."""
    torch.manual_seed(seed)
    widths, pools = arch
    chans = (1, *widths)
    n = len(widths)
    f = nn.Sequential(*(_stage(chans[i], chans[i + 1], pools[i], i == n - 1) for i in range(n)))
    g = nn.Linear(widths[-1], len(classes))
    keep = torch.isin(y, torch.tensor(classes))
    local = torch.searchsorted(torch.tensor(classes), y[keep])
    _fit([f, g], lambda b: g(f(b)), x[keep], local, epochs, seed)
    return Teacher(feature=f, head=g, classes=[str(c) for c in classes], layers=list(f))


def oracle(student: StudentConfig, x, y, n_classes: int, epochs: int, seed: int):
    """The student architecture trained with labels on the union (FAM folded away at init)."""
    torch.manual_seed(seed)
    f = StudentFeatures(student, "default")
    f.fold()
    g = build_head(student, n_classes)
    _fit([f, g], lambda b: g(f(b)), x, y, epochs, seed)
    return f, g


@torch.no_grad()
def _own_accuracy(logits, y_names: list[str], classes: list[str], own: list[str]) -> float:
    """Accuracy on the samples of `own` classes, argmax restricted to them (the teacher's own task)."""
    cols = [classes.index(c) for c in own]
    rows = [i for i, n in enumerate(y_names) if n in own]
    pred = logits[rows][:, cols].argmax(1)
    return float(np.mean([own[p] == y_names[r] for p, r in zip(pred.tolist(), rows, strict=True)]))


@torch.no_grad()
def _union_accuracy(logits, y_names: list[str], classes: list[str]) -> float:
    return float(np.mean([classes[p] == n for p, n in zip(logits.argmax(1).tolist(), y_names, strict=True)]))


def evaluate(teachers, x_unlab, x_test, y_names, student_cfg, cfg, oracle_fn, oracle_epochs) -> dict:
    """One run: amalgamation, baseline and oracle on the same teachers and data."""
    amal = amalgamate(teachers, x_unlab, student=student_cfg, config=cfg)
    base = distill_logits_baseline(teachers, x_unlab, student=student_cfg, config=cfg)
    classes = amal.classes
    of, og = oracle_fn(classes, oracle_epochs)
    with torch.no_grad():
        t_logits = [t.head(t.feature(x_test)) for t in teachers]
        logits = {
            "student": amal.task_module(amal.category_module(x_test)),
            "baseline": base.task_module(base.category_module(x_test)),
            "oracle": og(of(x_test)),
            "ensemble": merged_logits(t_logits, teachers, classes),
        }
    run = {k: {"union": _union_accuracy(v, y_names, classes)} for k, v in logits.items()}
    run["teachers"] = {"own": []}
    for t, z in zip(teachers, t_logits, strict=True):
        run["teachers"]["own"].append(_own_accuracy(z, y_names, t.classes, t.classes))
        for k in ("student", "baseline", "oracle"):
            run[k].setdefault("own", []).append(_own_accuracy(logits[k], y_names, classes, t.classes))
    run["params"] = {
        "student": amal.metrics["student_params"],
        "teachers": amal.metrics["teachers_params"],
        "oracle": count_params(of, og),
    }
    run["wall_s"] = {"amalgamate": amal.metrics["wall_s"], "baseline": base.metrics["wall_s"]}
    return run


def digits_study(n_teachers: int, seed: int, cfg: AmalgamationConfig, epochs: int) -> dict:
    """Digits split between n_teachers disjoint class sets."""
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(
        d.images, d.target, test_size=0.3, stratify=d.target, random_state=seed)
    to_x = lambda a: torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 16.0  # noqa: E731  (N, 1, 8, 8)
    xtr, xte, ytr = to_x(xtr), to_x(xte), torch.tensor(ytr)
    order = np.random.default_rng(seed).permutation(10)
    splits = [sorted(int(c) for c in part) for part in np.array_split(order, n_teachers)]
    teachers = [digits_teacher(xtr, ytr, s, DIGIT_TEACHERS[i % 2], epochs, seed * 10 + i)
                for i, s in enumerate(splits)]
    student = StudentConfig(input_shape=(1, 8, 8), widths=(32, 64))

    def oracle_fn(classes, ep):
        y = torch.tensor([classes.index(str(int(c))) for c in ytr])
        return oracle(student, xtr, y, len(classes), ep, seed)

    # The student sees the training images without their labels (teachers used only their own classes').
    return evaluate(teachers, xtr, xte, [str(int(c)) for c in yte], student, cfg, oracle_fn, epochs)


def world_study(seed: int, cfg: AmalgamationConfig, epochs: int, size: str) -> dict:
    """The benchmark world's styles as teachers (black boxes: f and the cls head); classes = style/shape."""
    from transplant.world import build_world

    w = build_world(seed, size, "shapes")
    teachers = [Teacher(feature=w.teachers[c]["cls"][0], head=w.teachers[c]["cls"][1],
                        classes=[f"{c}/{k}" for k in range(w.n_classes)]) for c in w.categories]
    x_unlab = torch.cat([torch.cat([w.data[c].train.x, w.data[c].unlabelled.x]) for c in w.categories])
    x_lab = torch.cat([w.data[c].train.x for c in w.categories])
    y_lab = [f"{c}/{int(k)}" for c in w.categories for k in w.data[c].train.y_cls]
    x_test = torch.cat([w.data[c].test.x for c in w.categories])
    y_test = [f"{c}/{int(k)}" for c in w.categories for k in w.data[c].test.y_cls]
    student = StudentConfig(input_shape=tuple(x_test.shape[1:]), widths=(16, 32, 32), pools=(2, 2, 1))

    def oracle_fn(classes, ep):
        return oracle(student, x_lab, torch.tensor([classes.index(n) for n in y_lab]), len(classes), ep, seed)

    return evaluate(teachers, x_unlab, x_test, y_test, student, cfg, oracle_fn, epochs)


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def summarise(name: str, runs: list[dict]) -> list[str]:
    """Markdown table rows for one study (mean ± std over seeds, accuracies in %)."""
    k = len(runs[0]["teachers"]["own"])
    lines = [f"### {name} ({len(runs)} seeds)", "",
             "| | " + " | ".join(f"teacher {i} classes" for i in range(k)) + " | union |",
             "|---|" + "---|" * (k + 1)]
    for who in ("teachers", "student", "baseline", "oracle", "ensemble"):
        has_own = "own" in runs[0][who]
        own = [_ms([r[who]["own"][i] for r in runs]) for i in range(k)] if has_own else ["–"] * k
        union = _ms([r[who]["union"] for r in runs]) if "union" in runs[0][who] else "–"
        label = {"teachers": "each teacher", "student": "**amalgamated student**",
                 "baseline": "logit distillation (same student)", "oracle": "oracle (labels, same student)",
                 "ensemble": "teachers' merged logits (the target)"}[who]
        lines.append(f"| {label} | " + " | ".join(own) + f" | {union} |")
    wins = sum(r["student"]["own"][i] >= r["teachers"]["own"][i] for r in runs for i in range(k))
    beats = sum(r["student"]["own"][i] >= r["baseline"]["own"][i] for r in runs for i in range(k))
    p = runs[0]["params"]
    wall = statistics.mean(r["wall_s"]["amalgamate"] for r in runs)
    lines += ["", f"Student ≥ teacher on the teacher's own classes in {wins}/{k * len(runs)} (teacher, seed) "
              f"cases; student ≥ logit-distillation baseline in {beats}/{k * len(runs)}. Parameters: student "
              f"{p['student']:,} vs teachers together {p['teachers']:,} "
              f"({p['teachers'] / p['student']:.1f}× fewer). "
              f"Amalgamation wall time {wall:.1f} s per run.", ""]
    return lines



def write_keeping_commentary(path: Path, text: str, marker: str, default: str = "") -> None:
    """Write `text` to `path`, then the old file's hand-written part from `marker` on (or `default`)."""
    old = path.read_text() if path.exists() else ""
    path.write_text(text + (marker + old.split(marker, 1)[1] if marker in old else default))

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, few epochs: a smoke run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-world", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = range(1 if args.quick else args.seeds)
    cfg = (AmalgamationConfig(epochs_per_layer=3, head_epochs=3, finetune_epochs=3) if args.quick
           else AmalgamationConfig())
    epochs = 3 if args.quick else 20
    studies: dict[str, list[dict]] = {}
    for n in (2, 4):
        studies[f"digits, {n} teachers"] = [digits_study(n, s, cfg, epochs) for s in seeds]
        print(*summarise(f"digits, {n} teachers", studies[f"digits, {n} teachers"]), sep="\n", flush=True)
    if not args.no_world:
        size = "small"
        studies["world (shapes, small): 3 style teachers, black boxes"] = [
            world_study(s, cfg, epochs, size) for s in seeds]
        name = "world (shapes, small): 3 style teachers, black boxes"
        print(*summarise(name, studies[name]), sep="\n", flush=True)
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s")
    if not args.quick:
        write_results(studies, cfg, epochs, total, len(seeds))


def write_results(studies: dict, cfg: AmalgamationConfig, epochs: int, total: float, n_seeds: int) -> None:
    """bench/results/amalgamation.json (raw runs) and .md (tables; an existing Commentary is kept)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "amalgamation.json").write_text(json.dumps({"config": vars(cfg), "runs": studies}, indent=1))
    lines = ["# Knowledge amalgamation (Shen et al., AAAI 2019) — measured", "",
             "Generated by `python -m bench.amalgamation` (CPU, 1 thread); accuracies in % on held-out test "
             f"data, mean ± std over {n_seeds} seeds; total wall time {total:.0f} s.", "",
             f"Settings: `{cfg}`; teachers and oracle: {epochs} epochs of Adam (lr 3e-3) with labels. "
             "Digits: 70/30 stratified split; the student gets the training images *without* labels; "
             f"teacher architectures alternate {DIGIT_TEACHERS}; student widths (32, 64). "
             "'Teacher i classes': test samples of teacher i's classes, argmax restricted to them "
             "(each teacher's own task).", ""]
    for name, runs in studies.items():
        lines += summarise(name, runs)
    write_keeping_commentary(RESULTS / "amalgamation.md", "\n".join(lines) + "\n", "## Commentary",
                             default="## Commentary\n")


if __name__ == "__main__":
    main()
