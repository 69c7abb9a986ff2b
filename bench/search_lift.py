"""Registered adapters offered to auto as they are, or lifted into a larger child (search/lift.py).

    python -m bench.search_lift 100 101 ... --name search-lift-a    # some dev worlds (parallel processes)
    python -m bench.search_lift --merge bench/results/search-lift-a.json ... --name search-lift-dev

Per world (bench.search's dev worlds and settings) and scenario (bench.search_warm's f@2, fine-tuned
a little or retrained from scratch; the predecessor's default adapter, learned on f@1, and the old
categories' adapters offered), three auto runs on f@2 with the default budget:
  cold  no registry;
  warm  the registered adapters as they are (lift_warm_starts false);
  lift  the same adapters grown into the best-ranked child that holds them exactly (true).
Test accuracy on 1024 fresh inputs of the new category; CPU seconds of each run (one thread).
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from functools import partial
from pathlib import Path

import torch

from bench.search import RESULTS, SPACE, _label, _timed, bench_world, score_on_test
from bench.search_warm import new_version, predecessor, registry
from transplant.search import run_auto_transplant

RUNS = {"cold": None, "warm": False, "lift": True}
"""Auto runs per scenario: no warm starts, or lift_warm_starts set to this."""
MODES = ("finetuned", "retrained")


def run_world(seed: int, steps: int = 200) -> dict:
    """The three auto runs for both scenarios of one world."""
    b = bench_world(seed, steps)
    world, cat, x, cfg, g_s = b.world, b.cat, b.x, b.cfg, b.g_s
    offered = registry(world, predecessor(world, cat, x, cfg))
    row: dict = {"seed": seed}
    for mode in MODES:
        f2, g2 = new_version(world, cat, seed, mode)
        row[mode] = {}
        for name, lifted in RUNS.items():
            budget = {"steps": steps, **SPACE} | ({} if lifted is None else {"lift_warm_starts": lifted})
            a, _, cpu = _timed(partial(run_auto_transplant, f2, g2, g_s, x, budget=budget, train=cfg,
                                       warm_starts=() if lifted is None else offered))
            s = a.metrics["search"]
            row[mode][name] = {
                "acc": score_on_test(a.adapter, f2, g2, g_s, b.test)["acc"],
                "cpu_s": cpu,
                "pick": _label(a.spec),
                "warm": s["warm_start"],
                "lifted_into": [w.get("lifted_into") for w in s["warm_starts"]],
            }
    return row


def report(rows: list[dict]) -> str:
    """Markdown: per-world accuracies and the paired differences."""
    seeds = [r["seed"] for r in rows]
    out = [
        "# Warm starts lifted into the search space (dev worlds)",
        "",
        f"Worlds {seeds[0]}–{seeds[-1]} ({len(rows)}; bench.search's settings: 200 steps, default budget, "
        "1024 fresh test inputs). `python -m bench.search_lift`; the module docstring says what each run "
        "is. Test accuracy %; in brackets the adapter auto kept and, if it was a registered one, *reg*.",
        "",
    ]
    for mode in MODES:
        out += [f"## {mode}", "", "| world | cold | warm (as registered) | lift |", "|---|---|---|---|"]
        for r in rows:
            cells = [f"{v['acc']:.1f} ({v['pick']}{', *reg*' if v['warm'] else ''})"
                     for v in r[mode].values()]
            out.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
        out.append("")
        for a, b in (("warm", "cold"), ("lift", "cold"), ("lift", "warm")):
            d = [r[mode][a]["acc"] - r[mode][b]["acc"] for r in rows]
            out.append(f"- {a} − {b}: **{st.mean(d):+.2f}** points (SE {st.stdev(d) / len(d) ** 0.5:.2f}; "
                       f"better in {sum(x > 0 for x in d)}, worse in {sum(x < 0 for x in d)} of {len(d)}).")
        for name in RUNS:
            runs = [r[mode][name] for r in rows]
            out.append(f"- {name}: mean accuracy {st.mean(v['acc'] for v in runs):.2f}, CPU "
                       f"{st.mean(v['cpu_s'] for v in runs):.2f} s, kept a registered adapter in "
                       f"{sum(bool(v['warm']) for v in runs)} of {len(runs)}.")
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("seeds", type=int, nargs="*")
    p.add_argument("--name", default="search-lift-dev")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="no runs: the report over these result files")
    args = p.parse_args()
    if args.merge:
        stored = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = sorted((r for d in stored for r in d["runs"]), key=lambda r: r["seed"])
        notes = [d["note"] for d in stored if d.get("note")]
    else:
        torch.set_num_threads(1)
        rows, notes = [], []
        for seed in args.seeds:
            rows.append(run_world(seed))
            print(f"world {seed} done", flush=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"runs": rows, "note": " ".join(notes)}, indent=1))
    if args.merge or len(rows) > 1:
        text = report(rows) + "".join(f"\nNote: {n}\n" for n in notes)
        print(text)
        (RESULTS / f"{args.name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
