"""Dev-world study behind the selection defaults: every child's own learning curve from inherited weights.

    python -m bench.search_curves 100 101 ... 109 [--supernet-fraction 0.3] [--sampling depth]

On each dev world (never a reported one) the super-network is trained exactly as run_auto_transplant
trains it, then every one of the 26 children is extracted and trained alone, continuing from its
inherited weights, for all the steps the budget has left after the super-net; its held-out
back-distillation loss and its test accuracy are recorded along the way. This shows (a) how well a
child's held-out loss after t own steps predicts where it ends, i.e. which selection rule to use, and
(b) the ceiling: what the best child reaches within the budget. Also trains the 26 fixed candidates
from scratch (200 steps, the bench.search reference) when --fixed. Writes
bench/results/search-curves-<sampling>-<fraction>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.search import RESULTS, SPACE, _label, bench_world, score_on_test
from transplant.blackbox import frozen
from transplant.run import _objective, run_transplant
from transplant.search.budget import AutoBudget
from transplant.search.stages import (
    Stepper,
    child_name,
    held_out_score,
    prepare,
    search_children,
    train_supernet,
)
from transplant.search.supernet import SuperNet

STEPS = 200
CHECKS = (0, 2, 4, 6, 8, 10, 12, 15, 20, 25, 30, 35, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 160)


def run_seed(seed: int, fraction: float, sampling: str, fixed: bool) -> dict:
    """Inherited scores, per-child curves and (optionally) the fixed candidates on one dev world."""
    b = bench_world(seed, STEPS)
    f, g_t, g_s, x, test, cfg = b.f, b.g_t, b.g_s, b.x, b.test, b.cfg
    plan = AutoBudget.from_dict({"steps": STEPS, **SPACE, "supernet_fraction": fraction,
                                 "sampling": sampling})
    rec: dict = {"seed": seed, "fixed": {}, "children": {}}
    with frozen(f, g_t, g_s):
        prep = prepare(f, g_t, x, None, cfg, plan, torch.device("cpu"))
        n_super = max(1, int(round(STEPS * fraction)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            supernet = SuperNet(prep.space)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        t = time.process_time()
        train_supernet(supernet, plan, "back_distillation", g_s, g_t, cfg, n_super, prep.train_data, gen)
        rec["supernet_cpu"] = time.process_time() - t

        def score(h):
            return held_out_score(h, g_s, g_t, prep.held_out, cfg)

        ranked = search_children(supernet, score, 64, cfg.seed)
        rec["inherited"] = [(child_name(c), s) for c, s in ranked]
        n_own = STEPS - n_super
        for c, _ in ranked:
            h = supernet.extract(c)
            for p in h.parameters():
                p.requires_grad_(True)
            obj = _objective("back_distillation", h, g_s, g_t, cfg, torch.Generator().manual_seed(seed + 5))
            stepper = Stepper(h, obj, cfg, prep.train_data, cfg.seed)
            curve, done = [], 0
            for step in (s for s in CHECKS if s <= n_own):
                if step > done:
                    stepper.run(step - done)
                    done = step
                curve.append((step, score(h), score_on_test(h, f, g_t, g_s, test)["acc"]))
            rec["children"][child_name(c)] = curve
    for c in prep.space.candidates() if fixed else []:
        t = time.process_time()
        r = run_transplant(f, g_t, g_s, x, method="back_distillation", adapter=prep.space.config(c),
                           train=cfg)
        rec["fixed"][_label(r.spec)] = {**score_on_test(r.adapter, f, g_t, g_s, test),
                                        "val_loss": score(r.adapter), "cpu": time.process_time() - t}
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("seeds", type=int, nargs="+")
    p.add_argument("--supernet-fraction", type=float, default=0.3)
    p.add_argument("--sampling", default="depth")
    p.add_argument("--fixed", action="store_true")
    p.add_argument("--out", type=Path, help="write here instead (e.g. one file per parallel process)")
    args = p.parse_args()
    if min(args.seeds) < 100:
        raise SystemExit("dev worlds only: seeds 100 and above (0-9 are the reported worlds)")
    torch.set_num_threads(1)
    out = args.out or RESULTS / f"search-curves-{args.sampling}-{args.supernet_fraction}.json"
    runs = json.loads(out.read_text()) if out.exists() else []
    for seed in args.seeds:
        runs = [r for r in runs if r["seed"] != seed] + [run_seed(seed, args.supernet_fraction, args.sampling,
                                                                  args.fixed)]
        out.write_text(json.dumps(runs, indent=1))
        print(seed, "done", flush=True)


if __name__ == "__main__":
    main()
