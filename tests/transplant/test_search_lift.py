"""Lifting a registered adapter into a larger child: same function at step 0, then more capacity."""

import copy
import dataclasses

import pytest
import torch

from tests.transplant.conftest import tiny_nets
from tests.transplant.test_search import FAST, SMALL, _perturbed, _teacher_through
from transplant.adapters import adapter_spec, build_adapter, fit_adapter_config
from transplant.search import SearchSpace, run_auto_transplant
from transplant.search.lift import can_lift, lift
from transplant.search.space import Candidate


def _configs(in_shape, out_shape, activation="relu"):
    space = SearchSpace.for_shapes(in_shape, out_shape, activation=activation, **SMALL)
    default = fit_adapter_config(in_shape, out_shape, activation=activation)
    return [space.config(c) for c in space.candidates()] + [default]


@pytest.mark.parametrize("in_shape,out_shape", [((4, 6, 6), (4, 6, 6)), ((4, 6, 6), (5, 3, 3)), ((7,), (7,))])
def test_every_lift_computes_the_same_function(in_shape, out_shape):
    cfgs = _configs(in_shape, out_shape)
    x = torch.randn(5, *in_shape)
    lifted = 0
    for a in cfgs:
        torch.manual_seed(1)
        src = _perturbed(build_adapter(a)).eval()
        for b in cfgs:
            if not can_lift(a, b):
                continue
            out = lift(src, a, b, seed=3).eval()
            assert sum(p.numel() for p in out.parameters()) > sum(p.numel() for p in src.parameters())
            torch.testing.assert_close(out(x), src(x), atol=1e-5, rtol=1e-5)
            lifted += 1
    # Kernel-only lifts of single layers, and width / depth / kernel lifts of the deeper ones.
    assert lifted >= (len(cfgs) if in_shape[0] == 4 and len(in_shape) == 3 else 4)


def test_the_extra_channels_learn():
    a = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **SMALL).config(Candidate(2, 4, 1, True))
    b = dataclasses.replace(a, layers=3, hidden=8, kernel_size=3)
    out = lift(_perturbed(build_adapter(a)), a, b)
    out(torch.randn(6, 4, 6, 6)).square().sum().backward()
    last = [m for m in out.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert last.weight[:, 4:].abs().sum() == 0  # zero on the way out of the new channels ...
    assert last.weight.grad[:, 4:].abs().sum() > 0  # ... but not stuck there


def test_what_cannot_be_lifted_exactly_is_refused():
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **SMALL)
    d2 = space.config(Candidate(2, 8, 1, True))
    assert not can_lift(d2, d2)  # nothing to grow
    assert not can_lift(d2, space.config(Candidate(2, 4, 3, True)))  # narrower
    assert not can_lift(d2, space.config(Candidate(3, 8, 3, False)))  # the skip differs
    assert not can_lift(space.config(Candidate(3, 8, 1, True)), d2)  # shallower
    assert not can_lift(space.config(Candidate(1, 0, 1, False)), d2)  # one layer into a ReLU stack
    assert can_lift(space.config(Candidate(1, 0, 1, False)), space.config(Candidate(1, 0, 3, False)))
    gelu = dataclasses.replace(d2, activation="gelu")
    assert not can_lift(gelu, dataclasses.replace(gelu, layers=3))  # the identity through a GELU is not
    assert can_lift(gelu, dataclasses.replace(gelu, hidden=16, kernel_size=3))
    other = SearchSpace.for_shapes((4, 6, 6), (5, 6, 6), **SMALL).config(Candidate(3, 8, 3, False))
    assert not can_lift(space.config(Candidate(2, 8, 1, False)), other)  # other shapes
    with pytest.raises(ValueError, match="cannot lift"):
        lift(build_adapter(d2), d2, d2)
    with pytest.raises(ValueError, match="the module has 3 layers, its config 2"):
        lift(build_adapter(dataclasses.replace(d2, layers=3)), d2, dataclasses.replace(d2, hidden=16))


def test_auto_grows_the_warm_start_it_keeps():
    f, _, g_s = tiny_nets()
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6))
    small = Candidate(2, 4, 1, True)
    good = _perturbed(build_adapter(space.config(small)))
    g_t = _teacher_through(g_s, copy.deepcopy(good))
    warm = [("good", good, adapter_spec(space.config(small)))]
    x = torch.randn(24, 3, 6, 6)
    budget = {"steps": 12, **SMALL, "lift_warm_starts": True}
    res = run_auto_transplant(f, g_t, g_s, x, budget=budget, warm_starts=warm, train=FAST)
    s = res.metrics["search"]
    (w,) = s["warm_starts"]
    assert w["name"] == "good" and w["lifted_into"]  # a larger child of the SMALL space
    # The teacher is g_S after exactly that adapter, so it wins, and what is kept is its lift.
    assert s["warm_start"] == "good" and res.config != space.config(small)
    assert can_lift(space.config(small), res.config)
    # Scores are those of the registered adapter itself: lifting does not change the function.
    as_is = {**budget, "lift_warm_starts": False}
    plain = run_auto_transplant(f, g_t, g_s, x, budget=as_is, warm_starts=warm, train=FAST)
    assert plain.metrics["search"]["warm_starts"][0]["score"] == pytest.approx(w["score"], rel=1e-5)
    assert "lifted_into" not in plain.metrics["search"]["warm_starts"][0]
    with pytest.raises(ValueError):
        run_auto_transplant(f, g_t, g_s, x, budget={"lift_warm_starts": "yes"})


def test_auto_keeps_the_start_when_the_fine_tune_does_not_lower_the_held_out_loss():
    # A registered adapter that is exactly the teacher's mapping: fine-tuning cannot lower its held-out
    # loss, so the start is kept as it was registered.
    f, _, g_s = tiny_nets()
    deep = {**SMALL, "depths": (2, 3)}
    space = SearchSpace.for_shapes((4, 6, 6), (4, 6, 6), **deep)
    x = torch.randn(24, 3, 6, 6)
    small = Candidate(2, 4, 1, True)
    exact = _perturbed(build_adapter(space.config(small)))
    g_exact = _teacher_through(g_s, copy.deepcopy(exact))
    warm = [("exact", exact, adapter_spec(space.config(small)))]
    b = {"steps": 16, **deep, "finalists": 1, "lift_warm_starts": False}
    res = run_auto_transplant(f, g_exact, g_s, x, budget=b, warm_starts=warm, train=FAST)
    assert res.metrics["search"]["warm_start"] == "exact" and res.config == space.config(small)
    assert all(torch.equal(v, exact.state_dict()[k]) for k, v in res.adapter.state_dict().items())
