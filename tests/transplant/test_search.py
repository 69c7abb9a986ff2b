"""Adapter search: exact child extraction, ranking, warm starts, end to end, cancellation."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from tests.transplant.conftest import tiny_nets
from transplant import Cancelled, TrainConfig
from transplant.adapters import adapter_spec, build_adapter, load_adapter, save_adapter
from transplant.run import _objective
from transplant.search import SearchSpace, SuperNet, held_out_score, run_auto_transplant, search_children
from transplant.search.budget import AutoBudget
from transplant.search.select import pick_finalists, schedule
from transplant.search.space import Candidate
from transplant.search.stages import Stepper, train_supernet

SMALL = dict(widths=(4, 8), depths=(1, 2, 3), kernels=(1, 3))
FAST = TrainConfig(batch_size=8, lr=1e-2, val_fraction=0.25, patience=2)


def _perturbed(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every weight visibly non-trivial, so a wrong slice cannot hide behind an identity init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return net


@pytest.mark.parametrize(
    "in_shape,out_shape",
    [((4, 6, 6), (4, 6, 6)), ((4, 6, 6), (5, 3, 3)), ((4, 3, 3), (4, 6, 6)), ((7,), (7,)), ((2, 3, 3), (5,))],
)
def test_extracted_child_equals_supernet_path(in_shape, out_shape):
    space = SearchSpace.for_shapes(in_shape, out_shape, **SMALL)
    torch.manual_seed(0)
    net = _perturbed(SuperNet(space))
    x = torch.randn(3, *in_shape)
    cands = space.candidates()
    assert len(cands) == len(set(cands)) > 4
    for c in cands:
        child = net.extract(c)
        assert tuple(child(x).shape) == (3, *out_shape)
        with torch.no_grad():
            assert torch.allclose(child(x), net(x, c), atol=1e-6, rtol=0), c
        # The extracted child is an ordinary adapter: its state dict loads into build_adapter's.
        build_adapter(space.config(c)).load_state_dict(child.state_dict(), strict=True)


def test_space_choices_are_canonical():
    conv = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **SMALL)
    assert len(conv.candidates()) == 2 + 2 * 2 * 2 * 2  # depth 1: kernel only; deeper: w × k × skip
    no_skip = SearchSpace.for_shapes((4, 6, 6), (5, 6, 6), **SMALL)
    assert not any(c.skip for c in no_skip.candidates())
    mlp = SearchSpace.for_shapes((7,), (7,), **SMALL)
    assert {c.kernel_size for c in mlp.candidates()} == {1}


def _teacher_through(g_s: nn.Module, mapping: nn.Module) -> nn.Module:
    return nn.Sequential(mapping, g_s).eval()


def test_search_ranks_the_exact_child_first():
    _, _, g_s = tiny_nets()
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **SMALL)
    torch.manual_seed(1)
    net = _perturbed(SuperNet(space), seed=1)
    target = Candidate(1, 0, 3, False)
    g_t = _teacher_through(g_s, net.extract(target))  # the teacher is g_S after exactly that child
    for p in [*g_s.parameters(), *g_t.parameters()]:
        p.requires_grad_(False)
    feats = torch.randn(16, 4, 6, 6)
    ranked = search_children(net, lambda h: held_out_score(h, g_s, g_t, feats, FAST), max_candidates=64)
    assert ranked[0][0] == target and ranked[0][1] < 1e-6 < ranked[1][1]
    assert len(ranked) == len(space.candidates())
    # With a budget below the space size the evolutionary search still scores exactly that many.
    few = search_children(net, lambda h: held_out_score(h, g_s, g_t, feats, FAST), max_candidates=7)
    assert len(few) == 7 and len({c for c, _ in few}) == 7


def test_warm_start_picks_the_best_registered_adapter():
    f, _, g_s = tiny_nets()
    good = _perturbed(
        build_adapter(SearchSpace.for_shapes((4, 6, 6), (4, 6, 6)).config(Candidate(2, 6, 3, True)))
    )
    g_t = _teacher_through(g_s, copy.deepcopy(good))
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6))
    poor = _perturbed(build_adapter(space.config(Candidate(2, 6, 3, True))), seed=5)
    other = build_adapter(space.config(Candidate(1, 0, 1, False)))

    wrong = build_adapter(SearchSpace.for_shapes((4, 6, 6), (5, 6, 6)).config(Candidate(1, 0, 1, False)))
    warm = [
        ("poor", poor, adapter_spec(space.config(Candidate(2, 6, 3, True)))),
        ("good", good, adapter_spec(space.config(Candidate(2, 6, 3, True)))),
        ("other", other, adapter_spec(space.config(Candidate(1, 0, 1, False)))),
        (
            "wrong",
            wrong,
            adapter_spec(SearchSpace.for_shapes((4, 6, 6), (5, 6, 6)).config(Candidate(1, 0, 1, False))),
        ),
    ]
    x = torch.randn(24, 3, 6, 6)
    # As registered (test_search_lift.py covers the lifted warm starts, the default).
    budget = {"steps": 6, **SMALL, "lift_warm_starts": False}
    res = run_auto_transplant(f, g_t, g_s, x, budget=budget, warm_starts=warm, train=FAST)
    s = res.metrics["search"]
    assert s["warm_start"] == "good"
    scores = {w["name"]: w["score"] for w in s["warm_starts"]}
    assert scores["good"] < min(scores["poor"], scores["other"]) and scores["wrong"] is None
    assert s["chosen"] == warm[1][2] and res.metrics["val_loss"] <= scores["good"] + 1e-9


def test_run_auto_transplant_saves_and_reports():
    f, g_t, g_s = tiny_nets()
    x, y = torch.randn(24, 3, 6, 6), torch.randint(0, 3, (24,))
    events = []

    class CB:
        def on_step_end(self, info):
            events.append(info)

    budget = {"steps": 10, "supernet_fraction": 0.5, "finalists": 1, **SMALL}  # no race: one finalist
    res = run_auto_transplant(f, g_t, g_s, x, y, budget=budget, train=FAST, callbacks=[CB()])
    s = res.metrics["search"]
    assert s["supernet_steps"] == 5 and s["finetune_steps"] <= 5 and s["warm_start"] is None
    assert s["race"] == [] and s["race_steps"] == 0
    assert len(s["candidates"]) == 18 and s["chosen"] == res.spec == s["candidates"][0]["spec"]
    assert [c["score"] for c in s["candidates"]] == sorted(c["score"] for c in s["candidates"])
    assert {"teacher_agreement", "val_loss", "task_metric", "steps", "wall_s", "n_train"} <= set(res.metrics)
    assert {e["stage"] for e in events} == {"supernet", "search", "finetune"}
    assert [e["step"] for e in events if e["stage"] != "search"] == sorted(
        e["step"] for e in events if e["stage"] != "search"
    )
    data, spec = save_adapter(res.adapter, res.config)
    loaded = load_adapter(data, spec)
    z = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(z), res.adapter(z))
    for k, v in res.adapter.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


@pytest.mark.parametrize(
    "limit,last_stage,scored",
    [(0, None, 0), (3, "supernet", 0), (10, "search", 6), (22, "search", 18)],
)
def test_cancellation_in_every_stage(limit, last_stage, scored):
    # 8 steps: 4 super-net steps (checks 1–4), 18 scores (5–22), then the fine-tune (23–).
    f, g_t, g_s = tiny_nets()
    x = torch.randn(16, 3, 6, 6)
    count, events = {"n": 0}, []

    def stop():
        count["n"] += 1
        return count["n"] > limit

    class CB:
        def on_step_end(self, info):
            events.append(info["stage"])

    with pytest.raises(Cancelled):
        run_auto_transplant(
            f, g_t, g_s, x, budget={"steps": 8, "supernet_fraction": 0.5, **SMALL}, train=FAST,
            should_stop=stop, callbacks=[CB()],
        )
    assert (events[-1] if events else None) == last_stage and events.count("search") == scored


def test_race_trials_the_finalists_within_the_step_budget():
    f, g_t, g_s = tiny_nets()
    x = torch.randn(24, 3, 6, 6)
    events = []

    class CB:
        def on_step_end(self, info):
            events.append((info["stage"], info["step"]))

    budget = {"steps": 40, "supernet_fraction": 0.3, "finalists": 3, "trial_fraction": 0.5,
              "selection": "race", "stratify": False, **SMALL}
    res = run_auto_transplant(f, g_t, g_s, x, budget=budget, train=FAST, callbacks=[CB()])
    s = res.metrics["search"]
    # 12 super-net steps, then 28 left: 14 for the trials, 4 for each of the 3 finalists.
    assert s["supernet_steps"] == 12 and s["race_steps"] == 12 and len(s["race"]) == 3
    assert res.metrics["steps"] == 12 + 12 + s["finetune_steps"] <= 40
    # The finalists are the three best children by inherited loss; the kept one is the best raced.
    assert [r["score"] for r in s["race"]] == [c["score"] for c in s["candidates"][:3]]
    kept = min(range(3), key=lambda i: s["race"][i]["raced_score"])
    assert s["chosen"] == s["candidates"][kept]["spec"] == res.spec
    assert s["chosen_score"] == s["race"][kept]["score"]
    assert res.metrics["val_loss"] <= s["race"][kept]["raced_score"]
    assert [st for st, _ in events if st == "race"] == ["race"] * 12
    steps = [step for st, step in events if st != "search"]
    assert steps == sorted(steps) and steps[-1] == res.metrics["steps"]
    assert {r["stage"] for r in res.history} == {"supernet", "race", "finetune"}


def test_warm_start_competes_in_the_race():
    f, _, g_s = tiny_nets()
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6))
    good = _perturbed(build_adapter(space.config(Candidate(2, 6, 3, True))))
    g_t = _teacher_through(g_s, copy.deepcopy(good))
    warm = [("good", good, adapter_spec(space.config(Candidate(2, 6, 3, True))))]
    budget = {"steps": 30, "finalists": 2, "trial_fraction": 0.5, "selection": "race", "stratify": False,
              "lift_warm_starts": False, **SMALL}
    x = torch.randn(24, 3, 6, 6)
    res = run_auto_transplant(f, g_t, g_s, x, budget=budget, warm_starts=warm, train=FAST)
    s = res.metrics["search"]
    assert [r["name"] for r in s["race"]][0] == "good" and len(s["race"]) == 2
    assert s["warm_start"] == "good" and s["chosen"] == warm[0][2]


def test_budget_is_validated():
    f, g_t, g_s = tiny_nets()
    with pytest.raises(ValueError):
        run_auto_transplant(f, g_t, g_s, torch.randn(8, 3, 6, 6), budget={"stepz": 3})
    for bad in ({"finalists": 0}, {"trial_fraction": 1.0}, {"sampling": "nope"}, {"selection": "best"},
                {"stratify": "yes"}, {"lift_warm_starts": "no"},
                # tried and not adopted (docs/search.md): unknown keys now
                {"extrapolate": True}, {"size_tolerance": 0.1}, {"warmup_steps": 5}, {"keep_optimizer": True},
                {"grow": "max"}):
        with pytest.raises(ValueError):
            run_auto_transplant(f, g_t, g_s, torch.randn(8, 3, 6, 6), budget=bad)


def test_sampling_is_fair_over_children():
    # Uniform sampling trains every child equally often; depth-first sampling (the old default)
    # gave the two single-layer children a third of all steps.
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **SMALL)
    cands = space.candidates()
    gen = torch.Generator().manual_seed(0)
    n = 200 * len(cands)
    counts = {c: 0 for c in cands}
    for _ in range(n):
        counts[space.sample(gen)] += 1
    assert set(counts) == set(cands) and min(counts.values()) > 0.7 * n / len(cands)
    depth_first = [space.sample(gen, "depth") for _ in range(600)]
    assert sum(c.layers == 1 for c in depth_first) > 150
    assert space.largest() == Candidate(3, 8, 3, True)
    with pytest.raises(ValueError):
        space.sample(gen, "nope")


def test_sandwich_trains_the_largest_child_and_one_uniform_child_every_step():
    # budget.sampling "sandwich": every optimiser step runs the whole chain (the largest child) first,
    # then one child drawn uniformly, and sums their losses.
    _, g_t, g_s = tiny_nets()
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **SMALL)
    torch.manual_seed(0)
    net = SuperNet(space)
    feats = torch.randn(24, 4, 6, 6)
    data = [feats, g_t(feats).detach(), torch.zeros(24)]
    seen: list = []
    net.register_forward_pre_hook(lambda mod, args: seen.append(mod.active))
    marker = register_optimizer_step_post_hook(lambda *_: seen.append("step"))
    try:
        plan = AutoBudget.from_dict({**SMALL, "sampling": "sandwich"})
        gen = torch.Generator().manual_seed(1)
        train_supernet(net, plan, "back_distillation", g_s, g_t, FAST, 12, data, gen)
    finally:
        marker.remove()
    steps, current = [], []
    for item in seen:
        if item == "step":
            steps.append(current)
            current = []
        elif not current or current[-1] != item:
            current.append(item)  # consecutive forwards of one child are one loss evaluation
    assert len(steps) == 12
    largest = space.largest()
    for children in steps:
        assert children[0] == largest and len(children) <= 2
    uniform = {children[1] for children in steps if len(children) == 2}
    assert len(uniform) >= 6  # a different child on most steps, not a fixed second one


def test_halving_schedule_spends_equal_rounds_within_the_trial_steps():
    assert schedule(8, 84, "halving") == [(8, 3), (4, 7), (2, 14)]
    assert schedule(5, 60, "halving") == [(5, 4), (3, 6), (2, 10)]  # 5 → 3 → 2 → 1
    assert schedule(4, 42, "race") == [(4, 10)]
    assert schedule(1, 50, "halving") == [] and schedule(4, 3, "race") == []
    for n, steps in ((8, 84), (5, 60), (3, 7), (16, 200)):
        assert sum(m * k for m, k in schedule(n, steps, "halving")) <= steps


def test_stepper_resumes_exactly_where_it_stopped():
    # Rounds of successive halving must continue one training run, not restart it: 2 + 4 steps
    # in two calls equal 6 steps in one (same optimiser state, same data order).
    _, g_t, g_s = tiny_nets()
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **SMALL)
    torch.manual_seed(0)
    a = _perturbed(build_adapter(space.config(Candidate(2, 8, 3, True))))
    b = copy.deepcopy(a)
    feats = torch.randn(20, 4, 6, 6)
    data = [feats, g_t(feats).detach(), torch.zeros(20)]
    runs = []
    for h in (a, b):
        obj = _objective("back_distillation", h, g_s, g_t, FAST, torch.Generator().manual_seed(3))
        runs.append(Stepper(h, obj, FAST, data, seed=1))
    runs[0].run(6)
    runs[1].run(2)
    rec = runs[1].run(4)
    assert rec["own_steps"] == 6 and rec["step"] == 4
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_successive_halving_continues_the_survivors():
    f, g_t, g_s = tiny_nets()
    x = torch.randn(24, 3, 6, 6)
    budget = {"steps": 60, "supernet_fraction": 0.3, "finalists": 4, "trial_fraction": 0.5,
              "selection": "halving", **SMALL}
    res = run_auto_transplant(f, g_t, g_s, x, budget=budget, train=FAST)
    s = res.metrics["search"]
    # 18 super-net steps, 42 left, 21 for the rounds: 4 × 2 steps, then 2 × 5.
    assert s["selection"] == "halving" and s["supernet_steps"] == 18 and s["race_steps"] == 8 + 10
    first = [r for r in s["race"] if r["round"] == 0]
    second = [r for r in s["race"] if r["round"] == 1]
    assert len(first) == 4 and len(second) == 2
    # The better half by held-out loss after round 0 goes on, continuing its own training.
    better_half = sorted(first, key=lambda r: r["raced_score"])[:2]
    assert {r["name"] for r in second} == {r["name"] for r in better_half}
    assert all(r["own_steps"] == 2 + 5 for r in second)
    kept = min(second, key=lambda r: r["raced_score"])
    assert s["chosen_score"] == kept["score"] and res.metrics["val_loss"] <= kept["raced_score"]
    assert res.metrics["steps"] == 18 + 18 + s["finetune_steps"] <= 60


def test_stratified_finalists_come_from_every_depth():
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **SMALL)
    torch.manual_seed(0)
    net = SuperNet(space)
    # Inherited scores that favour the single-layer children, as depth-first sampling does.
    ranked = sorted(((c, float(c.layers * 10 + i)) for i, c in enumerate(space.candidates())),
                    key=lambda cs: cs[1])
    plain = pick_finalists(ranked, [], 3, net)
    assert [p["child"].layers for p in plain] == [1, 1, 2]
    strat = pick_finalists(ranked, [], 3, net, stratify=True)
    assert sorted(p["child"].layers for p in strat) == [1, 2, 3]
    assert [p["score"] for p in strat] == sorted(p["score"] for p in strat)
    # A warm start that beats every child keeps its place among the finalists.
    warm = [{"name": "w", "score": -1.0, "module": net.extract(ranked[0][0]), "config": None}]
    with_warm = pick_finalists(ranked, warm, 3, net, stratify=True)
    assert with_warm[0]["warm"] == "w" and len(with_warm) == 3
