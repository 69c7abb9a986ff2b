"""python -m transplant world|run …: build the benchmark world, or run one transplant on it."""

from __future__ import annotations

import argparse
import json

import torch

from transplant.distill.trainer import TrainConfig
from transplant.metrics import task_metric
from transplant.run import METHODS, run_transplant
from transplant.world import build_world


def _world_summary(world) -> dict:
    """Teacher scores per category × task on the test splits."""
    scores = {}
    with torch.no_grad():
        for c in world.categories:
            for t in world.tasks:
                f, g = world.teachers[c][t]
                te = world.data[c].test
                scores[f"{c}/{t}"] = round(task_metric(g(f(te.x)), te.labels(t))["task_metric"], 4)
    return {
        "name": world.name,
        "old": world.old_categories,
        "new": world.new_categories,
        "teacher_scores": scores,
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m transplant")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("world", help="build the benchmark world and print the teachers' scores")
    r = sub.add_parser("run", help="learn an adapter for a new category × task of the world")
    for a in (w, r):
        a.add_argument("--size", default="small", choices=["small", "full"])
        a.add_argument("--world", default="shapes", choices=["shapes", "digits"])
        a.add_argument("--seed", type=int, default=0)
        a.add_argument("--threads", type=int, default=2)
    r.add_argument("--method", default="back_distillation", choices=METHODS)
    r.add_argument("--task", default="cls")
    r.add_argument("--labels", type=int, default=100, help="labelled samples for supervised")
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--steps-per-epoch", type=int, default=20)
    r.add_argument("--lambda-jac", type=float, default=1.0)
    r.add_argument("--probes", type=int, default=1)
    r.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = build_world(seed=args.seed, size=args.size, name=args.world)
    if args.cmd == "world":
        print(json.dumps(_world_summary(world), indent=2))
        return
    cat = world.new_categories[0]
    f, g_t = world.teachers[cat][args.task]
    d = world.data[cat]
    samples = d.train.take(slice(0, args.labels)) if args.method == "supervised" else d.unlabelled
    y = samples.labels(args.task) if args.method == "supervised" else None
    cfg = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        lambda_jac=args.lambda_jac,
        probes=args.probes,
        device=args.device,
    )
    res = run_transplant(
        f, g_t, world.generic[args.task], samples.x, y, method=args.method, train=cfg, callbacks=[_Printer()]
    )
    with torch.no_grad():
        test = task_metric(world.generic[args.task](res.adapter(f(d.test.x))), d.test.labels(args.task))
    print(json.dumps({"category": cat, "task": args.task, **res.metrics, "test": test}, indent=2))


class _Printer:
    """Prints one line per epoch."""

    def on_epoch_end(self, info: dict) -> None:
        print(
            f"epoch {info['epoch']}/{info['epochs']} loss {info['loss']:.4f} jac {info['loss_jac']:.4f} "
            f"val {info.get('val_loss', float('nan')):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
