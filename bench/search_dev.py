"""How the auto defaults were chosen: budget variants on dev worlds that bench.search never reports.

    python -m bench.search_dev 100 101 102 103            # with the 26 fixed candidates (≈ 5 min)
    python -m bench.search_dev --no-fixed 104 105 106     # auto variants only

Same worlds, training settings and 1024-input fresh test split as bench.search, at seeds 100+.
Writes bench/results/search-dev-<seeds>.json; search.md summarises the runs behind the defaults.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.search import RESULTS, SPACE, _label, fresh_test, score_on_test
from transplant.distill.trainer import TrainConfig
from transplant.run import run_transplant
from transplant.search import SearchSpace, run_auto_transplant
from transplant.world import build_world

VARIANTS = {
    "A depth .5": dict(sampling="depth", supernet_fraction=0.5, finalists=1),
    "B depth .3": dict(sampling="depth", supernet_fraction=0.3, finalists=1),
    "C depth .5 k4": dict(sampling="depth", supernet_fraction=0.5, finalists=4, trial_fraction=0.3),
    "D depth .3 k4": dict(sampling="depth", supernet_fraction=0.3, finalists=4, trial_fraction=0.3),
    "E depth .5 k3 t.5": dict(sampling="depth", supernet_fraction=0.5, finalists=3, trial_fraction=0.5),
    "F unif .5 k4": dict(sampling="uniform", supernet_fraction=0.5, finalists=4, trial_fraction=0.3),
    "G depth .4 k6 t.4": dict(sampling="depth", supernet_fraction=0.4, finalists=6, trial_fraction=0.4),
    "H depth .3 k3 t.4": dict(sampling="depth", supernet_fraction=0.3, finalists=3, trial_fraction=0.4),
    "I unif .3 k4": dict(sampling="uniform", supernet_fraction=0.3, finalists=4, trial_fraction=0.3),
    "J depth .3 k2": dict(sampling="depth", supernet_fraction=0.3, finalists=2, trial_fraction=0.3),
}
"""A–G ran on dev worlds 100–103 with the fixed candidates; A, B, D, F, H, I, J on 104–109 without."""


def run_seed(seed: int, variants: list[str], fixed: bool) -> dict:
    """Test scores of the fixed candidates (optional) and of each auto variant on one dev world."""
    w = build_world(seed, "small", "shapes")
    cat = w.new_categories[0]
    f, g_t = w.teachers[cat]["cls"]
    g_s = w.generic["cls"]
    d = w.data[cat]
    x = torch.cat([d.train.x, d.unlabelled.x])
    test = fresh_test(w, cat, 1024)
    cfg = TrainConfig(
        batch_size=32, lr=3e-3, val_fraction=0.2, patience=10**6, seed=seed, epochs=10**6, max_steps=200
    )
    space = SearchSpace.for_shapes(w.feature_shape, w.feature_shape, **SPACE)
    rec: dict = {"seed": seed, "fixed": {}, "auto": {}}
    for c in space.candidates() if fixed else []:
        t = time.process_time()
        r = run_transplant(f, g_t, g_s, x, method="back_distillation", adapter=space.config(c), train=cfg)
        rec["fixed"][_label(r.spec)] = {**score_on_test(r.adapter, f, g_t, g_s, test),
                                        "cpu": time.process_time() - t}
    for name in variants:
        t = time.process_time()
        a = run_auto_transplant(f, g_t, g_s, x, budget={"steps": 200, **SPACE, **VARIANTS[name]}, train=cfg)
        rec["auto"][name] = {**score_on_test(a.adapter, f, g_t, g_s, test), "cpu": time.process_time() - t,
                             "pick": _label(a.spec), "race": a.metrics["search"]["race"]}
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("seeds", type=int, nargs="+")
    p.add_argument("--no-fixed", action="store_true")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = p.parse_args()
    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args.variants, not args.no_fixed))
        print(seed, {k: round(v["acc"], 1) for k, v in runs[-1]["auto"].items()}, flush=True)
    out = RESULTS / f"search-dev-{'_'.join(map(str, args.seeds))}.json"
    out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
