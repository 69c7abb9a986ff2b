"""Choosing the adapter to fine-tune: finalists from the ranked children and warm starts, then rounds.

Inherited-weight losses compare children that the super-network trained for unequal step counts
(depth-first sampling gives the two single-layer children a third of all steps; the sandwich rule
trains the largest path every step), so the search gives the best few starting points some training
of their own before comparing them again:
  race     one round: every finalist gets the same few steps, the lowest held-out loss is kept;
  halving  successive halving: every round the survivors get the same steps, continuing where they
           stopped (same optimiser state), and the better half by held-out loss goes on; the steps of
           a round are not lost for the survivors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from transplant.distill.trainer import TrainConfig
from transplant.search.space import Candidate
from transplant.search.stages import Staged, Stepper, child_name
from transplant.search.supernet import SuperNet


def pick_finalists(
    ranked: list[tuple[Candidate, float]],
    warm: list[dict],
    k: int,
    supernet: SuperNet,
    stratify: bool = False,
) -> list[dict]:
    """The k best starting points, children and warm starts ranked alike, as trainable adapters.

    stratify: take the children round-robin over depths (best inherited loss within each depth
    first), so that the deeper children, which the super-net trains less per child, are not all
    crowded out by the single-layer ones before they had any training of their own.
    """
    children = [{"name": child_name(c), "score": s, "child": c, "warm": None} for c, s in ranked]
    warm_pool = [{**w, "warm": w["name"]} for w in warm if w["score"] is not None]
    if stratify:
        interleaved = round_robin(children, lambda p: p["child"].layers, lambda p: p["score"])
        n_warm = sum(1 for w in sorted(warm_pool + children[:k], key=lambda p: p["score"])[:k] if w["warm"])
        chosen = sorted(warm_pool, key=lambda p: p["score"])[:n_warm] + interleaved[: k - n_warm]
    else:
        chosen = sorted(children[:k] + warm_pool, key=lambda p: p["score"])[:k]
    for p in chosen:
        if p["warm"] is None:
            p["module"], p["config"] = supernet.extract(p["child"]), supernet.space.config(p["child"])
        for q in p["module"].parameters():
            q.requires_grad_(True)
    return chosen


def round_robin(items: list, group: Callable[[Any], Any], score: Callable[[Any], float]) -> list:
    """`items` (each group best first already) taken round-robin over the groups: the best of every
    group, best score first, then the second of every group, and so on."""
    by_group: dict = {}
    for item in items:
        by_group.setdefault(group(item), []).append(item)
    out: list = []
    for i in range(max((len(v) for v in by_group.values()), default=0)):
        out += sorted((v[i] for v in by_group.values() if i < len(v)), key=score)
    return out


def schedule(n: int, steps: int, mode: str) -> list[tuple[int, int]]:
    """(starting points in the round, steps for each) of every round; `steps` is their total."""
    if n <= 1 or steps < n:
        return []
    if mode == "race":
        return [(n, steps // n)]
    rounds = []
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / 2))
    per_round = steps // (len(sizes) - 1)  # each round gets an equal share, as in Jamieson & Talwalkar
    for m in sizes[:-1]:
        rounds.append((m, max(1, per_round // m)))
    return rounds


def run_rounds(
    finalists: list[dict],
    rounds: list[tuple[int, int]],
    make_objective: Callable[[nn.Module], Callable],
    score: Callable[[nn.Module], float],
    cfg: TrainConfig,
    data: list,
    callbacks: Sequence[Any],
    offset: int,
    total: int,
    should_stop: Callable[[], bool] | None,
) -> tuple[dict, list[dict], int]:
    """Train and cut the finalists round by round; (winner, per-round records, steps spent)."""
    alive = list(range(len(finalists)))
    records: list[dict] = []
    done = 0
    for r, (_, steps) in enumerate(rounds):
        for i in alive:
            fin = finalists[i]
            if "stepper" not in fin:
                # The same data order for every finalist (common random numbers: the comparison
                # measures the starting points, not the luck of the batches).
                fin["stepper"] = Stepper(fin["module"], make_objective(fin["module"]), cfg, data, cfg.seed,
                                         should_stop)
            cb = Staged(callbacks, "race", offset + done, total, round=r, finalist=i)
            rec = fin["stepper"].run(steps, [cb])
            done += steps
            fin.setdefault("history", []).append({**rec, "stage": "race", "round": r, "finalist": i})
            fin["raced"] = score(fin["module"])
            records.append({"round": r, "name": fin["name"], "score": fin["score"],
                            "raced_score": fin["raced"], "own_steps": fin["stepper"].steps_done})
        keep = 1 if r == len(rounds) - 1 else math.ceil(len(alive) / 2)
        alive = sorted(alive, key=lambda i: finalists[i]["raced"])[:keep]
    if not rounds:
        return min(finalists, key=lambda fin: fin["score"]), records, 0
    return finalists[alive[0]], records, done
