"""The engine and compositions on an accelerator against the CPU (marker gpu; run by `make gpu-check`).

The device is GRAFT_TEST_DEVICE (default cuda); `make gpu-check-dry` runs the same tests with cpu so they
fail only for device reasons on the GPU machine. These tests need nothing but torch, numpy and scikit-learn
(no database, broker or server): the GPU machine has none of them.

Tolerance: TF32 is switched off here, so float32 results on the device match the CPU to rtol 1e-4 /
atol 1e-5 for forwards and 1e-3 / 1e-5 for gradients that go through a double backward. Training runs
draw their probes and batches from device generators, so they are compared by outcome (teacher agreement
within 0.15 of the CPU run), not step by step.
"""

from __future__ import annotations

import io
import os

import pytest
import torch
from torch import nn

from transplant import TrainConfig, run_transplant
from transplant.adapters import build_adapter, fit_adapter_config, init_adapter
from transplant.artifacts import save_module
from transplant.compose import compose, export_composed
from transplant.distill.losses import back_distillation_loss, teacher_probes

pytestmark = pytest.mark.gpu
DEVICE = torch.device(os.environ.get("GRAFT_TEST_DEVICE", "cuda"))
FWD = {"rtol": 1e-4, "atol": 1e-5}
GRAD = {"rtol": 1e-3, "atol": 1e-5}


@pytest.fixture(autouse=True, scope="module")
def _exact_float32():
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("GRAFT_TEST_DEVICE is cuda but torch sees no CUDA device")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _nets(seed: int = 0):
    """f: (3, 8, 8) → (6, 8, 8); g_T (BatchNorm, GELU) and g_S (depthwise conv, ReLU): → 5 logits."""
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.GELU())
    g_t = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5))
    g_s = nn.Sequential(nn.Conv2d(6, 12, 1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1, groups=12),
                        nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    for m in (f, g_t, g_s):
        m.eval().requires_grad_(False)
    return f, g_t, g_s


def _on(device: torch.device, *modules: nn.Module) -> list[nn.Module]:
    import copy

    return [copy.deepcopy(m).to(device) for m in modules]


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_adapter_forward(arch):
    shape = (6, 4, 4)
    cfg = fit_adapter_config(shape, shape, arch=arch)
    torch.manual_seed(1)
    h = build_adapter(cfg)
    x = torch.randn(16, *shape) * 2 + 1
    init_adapter(h, cfg, x, torch.randn(16, *shape))
    (h_d,) = _on(DEVICE, h)
    torch.testing.assert_close(h_d(x.to(DEVICE)).cpu(), h(x), **FWD)


@pytest.mark.parametrize("curvature", [False, True])
def test_back_distillation_loss_and_gradient(curvature):
    f, g_t, g_s = _nets()
    x = f(torch.randn(12, 3, 8, 8))
    cfg = fit_adapter_config((6, 8, 8), (6, 8, 8))
    torch.manual_seed(2)
    h = build_adapter(cfg)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.2 * torch.randn_like(p))
    teacher = teacher_probes(g_t, x, 3, generator=torch.Generator().manual_seed(3))
    results = []
    for device in (torch.device("cpu"), DEVICE):
        h_d, g_s_d, g_t_d = _on(device, h, g_s, g_t)
        t = back_distillation_loss(
            x.to(device), h_d, g_s_d, g_t_d, output_loss="kl", student_curvature=curvature,
            teacher=type(teacher)(teacher.y.to(device), teacher.v.to(device), teacher.jt_v.to(device)),
            generator=torch.Generator(device=device).manual_seed(0) if device.type == "cpu" else None,
            probes=3,
        )
        grads = torch.autograd.grad(t.loss, list(h_d.parameters()), allow_unused=True)
        results.append((t.loss.detach().cpu(), [None if g is None else g.cpu() for g in grads]))
    (loss_c, grads_c), (loss_d, grads_d) = results
    torch.testing.assert_close(loss_d, loss_c, **GRAD)
    for a, b in zip(grads_d, grads_c, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **GRAD)


def test_teacher_probes_match_for_given_probes():
    _, g_t, _ = _nets()
    x = torch.randn(8, 6, 8, 8)
    cpu = teacher_probes(g_t, x, 2, generator=torch.Generator().manual_seed(4))
    (g_t_d,) = _on(DEVICE, g_t)
    x_d = x.to(DEVICE).requires_grad_(True)
    y = g_t_d(x_d)
    (jt,) = torch.autograd.grad(y, x_d, cpu.v[:, 0].to(DEVICE))
    torch.testing.assert_close(y.detach().cpu(), cpu.y, **FWD)
    torch.testing.assert_close(jt.cpu(), cpu.jt_v[:, 0], **GRAD)


@pytest.mark.parametrize("method", ["back_distillation", "distillation", "supervised"])
def test_run_transplant(method):
    f, g_t, g_s = _nets()
    x = torch.randn(96, 3, 8, 8)
    with torch.no_grad():
        y = g_t(f(x)).argmax(1)
    out = {}
    for device in ("cpu", DEVICE.type):
        r = run_transplant(f, g_t, g_s, x, y if method == "supervised" else None, method=method,
                           train=TrainConfig(steps=60, batch_size=32, device=device, seed=0))
        assert r.metrics["device"].startswith(device)
        assert all(p.device.type == "cpu" for p in r.adapter.parameters())  # handed back on the CPU
        out[device] = r.metrics["teacher_agreement"]
    assert abs(out[DEVICE.type] - out["cpu"]) <= 0.15, out


def test_amalgamation():
    from transplant.amalgamate import AmalgamationConfig, StudentConfig, Teacher, amalgamate

    torch.manual_seed(5)
    teachers = []
    for k in range(2):
        feat = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head = nn.Linear(8, 3)
        teachers.append(Teacher(feature=feat.eval(), head=head.eval(), classes=[f"{k}{c}" for c in range(3)],
                                layers=list(feat)))
    x = torch.randn(64, 1, 8, 8)
    cfg = AmalgamationConfig(epochs_per_layer=2, head_epochs=2, finetune_epochs=2, batch_size=32, seed=0,
                             device=str(DEVICE))
    res = amalgamate(teachers, x, student=StudentConfig(input_shape=(1, 8, 8), widths=(8,)), config=cfg)
    device = next(res.category_module.parameters()).device
    with torch.no_grad():
        logits = res.task_module(res.category_module(x[:4].to(device)))
    assert logits.shape == (4, 6) and torch.isfinite(logits).all()


def test_auto_search():
    from transplant.search import run_auto_transplant

    f, g_t, g_s = _nets()
    x = torch.randn(64, 3, 8, 8)
    r = run_auto_transplant(f, g_t, g_s, x, budget={"steps": 40, "widths": [6], "depths": [1, 2],
                                                     "kernels": [1, 3]},
                            train=TrainConfig(batch_size=32, device=DEVICE.type, seed=0))
    assert r.metrics["teacher_agreement"] is not None


def test_composition_and_export():
    f, g_t, g_s = _nets()
    cfg = fit_adapter_config((6, 8, 8), (6, 8, 8))
    h = build_adapter(cfg).eval()
    x = torch.randn(4, 3, 8, 8)
    composed = compose(f, h, g_s)
    want = composed(x)
    (on_device,) = _on(DEVICE, composed)
    torch.testing.assert_close(on_device(x.to(DEVICE)).cpu(), want, **FWD)
    data = export_composed(composed, x[:2], "torch_export")
    program = torch.export.load(io.BytesIO(data)).module().to(DEVICE)
    torch.testing.assert_close(program(x.to(DEVICE)).cpu(), want, **FWD)
    assert save_module(h, torch.randn(2, 6, 8, 8), "torch_export")  # exports as uploaded pieces do
