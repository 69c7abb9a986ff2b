"""run_transplant end to end on tiny nets: methods, black boxes, determinism, cancellation."""

import pytest
import torch

from tests.transplant.conftest import tiny_nets
from transplant import Cancelled, TrainConfig, TrainingDiverged, run_transplant
from transplant.errors import UnknownMethod

FAST = dict(epochs=3, batch_size=8, lr=1e-2, val_fraction=0.25, patience=2)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("method", ["supervised", "distillation", "back_distillation"])
def test_methods_leave_black_boxes_bitwise_equal(method):
    f, g_t, g_s = tiny_nets()
    before = [_state(m) for m in (f, g_t, g_s)]
    x = torch.randn(24, 3, 6, 6)
    y = torch.randint(0, 3, (24,))
    seen = []

    class CB:
        def on_step_end(self, info):
            seen.append(info)

    res = run_transplant(
        f, g_t, g_s, x, y, method=method, train=TrainConfig(**FAST, probes=2), callbacks=[CB()]
    )
    for m, b in zip((f, g_t, g_s), before, strict=True):
        assert all(torch.equal(v, b[k]) for k, v in m.state_dict().items())  # incl. BN running stats
        assert not m.training
    assert {"epoch", "epochs", "step", "loss", "loss_out", "loss_jac", "samples_per_s"} <= set(seen[0])
    assert 0 <= res.metrics["teacher_agreement"] <= 1 and "task_metric" in res.metrics
    assert res.history and res.spec["arch"] == "conv"
    assert res.adapter(torch.randn(2, 4, 6, 6)).shape == (2, 4, 6, 6)


def test_deterministic_on_cpu():
    f, g_t, g_s = tiny_nets()
    x = torch.randn(16, 3, 6, 6)
    runs = [
        run_transplant(f, g_t, g_s, x, method="back_distillation", train=TrainConfig(**FAST, seed=3))
        for _ in range(2)
    ]
    a_state, b_state = runs[0].adapter.state_dict(), runs[1].adapter.state_dict()
    for a, b in zip(a_state.values(), b_state.values(), strict=True):
        assert torch.equal(a, b)


def test_exported_and_scripted_black_boxes():
    f, g_t, g_s = tiny_nets()
    x = torch.randn(12, 3, 6, 6)
    feats = f(x[:2])
    batch = torch.export.Dim("batch", min=1)
    g_t_exp = torch.export.export(g_t, (feats,), dynamic_shapes=({0: batch},)).module()
    g_s_jit = torch.jit.trace(g_s, (feats,))
    res = run_transplant(
        f,
        g_t_exp,
        g_s_jit,
        x,
        method="back_distillation",
        train=TrainConfig(epochs=1, batch_size=6, val_fraction=0),
    )
    assert res.metrics["steps"] == 2 and res.metrics["metrics_on"] == "train"


def test_cancel_and_diverge_and_unknown():
    f, g_t, g_s = tiny_nets()
    x = torch.randn(8, 3, 6, 6)
    with pytest.raises(Cancelled):
        run_transplant(f, g_t, g_s, x, method="distillation", should_stop=lambda: True)
    with pytest.raises(TrainingDiverged):
        run_transplant(f, g_t, lambda z: g_s(z) * float("nan"), x, method="distillation")
    with pytest.raises(UnknownMethod):
        run_transplant(f, g_t, g_s, x, method="magic")
    with pytest.raises(ValueError):
        run_transplant(f, g_t, g_s, x, method="supervised")


def test_distillation_learns_identity_gap():
    """With g_S = g_T, the best adapter is the identity-like map; distillation should approach it."""
    f, g_t, _ = tiny_nets()
    x = torch.randn(32, 3, 6, 6)
    res = run_transplant(
        f,
        g_t,
        g_t,
        x,
        method="back_distillation",
        adapter={"layers": 1},
        train=TrainConfig(epochs=5, batch_size=16, val_fraction=0),
    )
    assert res.metrics["teacher_agreement"] > 0.9
