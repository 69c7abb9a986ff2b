"""Data-free synthesis: seeded, reproducible, matching BatchNorm statistics, and clear without BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from support.world import FEAT_SHAPE, X_SHAPE, tiny_nets
from transplant import TrainConfig, run_transplant
from transplant.artifacts import load_module, save_module
from transplant.synth import NeedsBatchNorm, SynthesisConfig, batchnorm_layers, mix_real, synthesise

FAST = {"n": 24, "steps": 25, "batch_size": 12}


def _exported(net: nn.Module, shape: tuple, tmp_path, name: str) -> nn.Module:
    path = tmp_path / f"{name}.pt2"
    path.write_bytes(save_module(net, torch.zeros(2, *shape), "torch_export"))
    return load_module(path, "torch_export")


def _no_bn_nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU()).eval()
    g = nn.Sequential(nn.Conv2d(4, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 3)).eval()
    return f, g


@pytest.mark.parametrize("method", ["deepinversion", "features", "noise"])
def test_same_seed_same_inputs_other_seed_other_inputs(method: str) -> None:
    f, g_t, _ = tiny_nets()
    runs = [synthesise(f, g_t, X_SHAPE, SynthesisConfig(method=method, seed=s, **FAST),
                       feature_shape=FEAT_SHAPE) for s in (3, 3, 4)]
    assert torch.equal(runs[0].x, runs[1].x)
    assert not torch.allclose(runs[0].x, runs[2].x)
    assert runs[0].report["bn_distance"] == runs[1].report["bn_distance"]
    shape = FEAT_SHAPE if method == "features" else X_SHAPE
    assert runs[0].x.shape == (FAST["n"], *shape) and runs[0].space == ("feature" if method == "features"
                                                                        else "input")


def _calibrated(f: nn.Module, g_t: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Copies whose BatchNorm layers stored the statistics of data (x ~ N(0.5, 2²)), as trained ones do."""
    f, g_t = copy.deepcopy(f), copy.deepcopy(g_t)
    for m in [*f.modules(), *g_t.modules()]:
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    f.train(), g_t.train()
    with torch.no_grad():
        g_t(f(0.5 + 2 * torch.randn(256, *X_SHAPE, generator=torch.Generator().manual_seed(0))))
    return f.eval(), g_t.eval()


def test_deepinversion_meets_the_stored_statistics_and_leaves_the_nets_alone() -> None:
    f, g_t = _calibrated(*tiny_nets()[:2])
    before = {k: v.clone() for k, v in [*f.state_dict().items(), *g_t.state_dict().items()]}
    flags = [p.requires_grad for p in [*f.parameters(), *g_t.parameters()]]
    cfg = SynthesisConfig(method="deepinversion", n=32, steps=150, batch_size=32, tv=0.0, l2=0.0,
                          diversity=0.0)
    r = synthesise(f, g_t, X_SHAPE, cfg).report
    assert r["bn_layers"] == {"category_module": 1, "teacher_task_module": 1}
    # With the priors off, statistics off at the start land close to the stored ones.
    assert r["bn_distance"] < 0.25 * r["bn_distance_init"], (r["bn_distance"], r["bn_distance_init"])
    assert r["wall_s"] > 0 and 0 <= r["class_balance"] <= 1
    after = {k: v for k, v in [*f.state_dict().items(), *g_t.state_dict().items()]}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in [*f.parameters(), *g_t.parameters()]] == flags
    assert all(p.grad is None for p in [*f.parameters(), *g_t.parameters()])
    assert all(not m._forward_pre_hooks for m in [*f.modules(), *g_t.modules()])


def test_exported_graphs_give_the_same_inputs_as_the_modules(tmp_path) -> None:
    """BatchNorm read from a torch.export graph's batch_norm calls: same numbers as the module's hooks."""
    f, g_t, _ = tiny_nets()
    f_x, g_x = _exported(f, X_SHAPE, tmp_path, "f"), _exported(g_t, FEAT_SHAPE, tmp_path, "g")
    assert batchnorm_layers(f_x) == batchnorm_layers(g_x) == 1
    cfg = SynthesisConfig(method="deepinversion", **FAST)
    a, b = synthesise(f, g_t, X_SHAPE, cfg), synthesise(f_x, g_x, X_SHAPE, cfg)
    torch.testing.assert_close(a.x, b.x, rtol=1e-4, atol=1e-4)
    assert b.report["bn_distance"] == pytest.approx(a.report["bn_distance"], rel=1e-3)


def test_without_batchnorm_auto_falls_back_and_the_others_say_what_they_need(tmp_path) -> None:
    f, g = _no_bn_nets()
    syn = synthesise(f, g, X_SHAPE, SynthesisConfig(method="auto", **FAST))
    assert syn.report["method"] == "noise" and "no BatchNorm" in syn.report["fallback"]
    assert syn.report["bn_distance"] is None and syn.x.shape == (FAST["n"], *X_SHAPE)
    with pytest.raises(NeedsBatchNorm, match="BatchNorm layers"):
        synthesise(f, g, X_SHAPE, SynthesisConfig(method="deepinversion", **FAST))
    f_bn, _, _ = tiny_nets()
    with pytest.raises(NeedsBatchNorm, match="teacher task module's BatchNorm"):
        synthesise(f_bn, g, X_SHAPE, SynthesisConfig(method="features", **FAST), feature_shape=FEAT_SHAPE)
    # TorchScript hides BatchNorm's inputs: counted as none.
    scripted = torch.jit.trace(tiny_nets()[1], torch.zeros(2, *FEAT_SHAPE))
    assert batchnorm_layers(scripted) == 0


def test_noise_is_calibrated_on_fs_first_batchnorm() -> None:
    f, g_t, _ = tiny_nets()
    syn = synthesise(f, g_t, X_SHAPE, SynthesisConfig(method="noise", n=32, steps=100, batch_size=32))
    assert syn.report["calibrated"] and syn.report["bn_distance"] < syn.report["bn_distance_init"]


def test_feature_space_synthesis_mixes_real_inputs_through_f_and_trains() -> None:
    f, g_t, g_s = tiny_nets()
    syn = synthesise(f, g_t, X_SHAPE, SynthesisConfig(method="features", **FAST), feature_shape=FEAT_SHAPE)
    real = torch.randn(5, *X_SHAPE)
    f_used, x = mix_real(f, syn, real)
    assert isinstance(f_used, nn.Identity) and x.shape == (5 + FAST["n"], *FEAT_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(x[:5], f(real))
    res = run_transplant(f_used, g_t, g_s, x, method="back_distillation",
                         train=TrainConfig(steps=5, val_fraction=0.0))
    assert res.metrics["n_train"] == 5 + FAST["n"]
    f_in, x_in = mix_real(f, synthesise(f, g_t, X_SHAPE, SynthesisConfig(method="noise", **FAST)), real)
    assert f_in is f and x_in.shape == (5 + FAST["n"], *X_SHAPE)
