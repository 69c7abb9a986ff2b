"""Correctness of the Jacobian-matching term against exact Jacobians and an explicit back network."""

import pytest
import torch
from torch import nn

from tests.transplant.conftest import tiny_nets
from transplant.adapters import build_adapter, fit_adapter_config
from transplant.blackbox import frozen
from transplant.distill.losses import (
    back_distillation_loss,
    curvature_matters,
    distillation_loss,
    jacobian_term_exact,
)


def test_probe_estimate_matches_exact_frobenius():
    f, g_t, g_s = tiny_nets(seed=1)
    h = build_adapter(fit_adapter_config((4, 6, 6), (4, 6, 6), layers=2, hidden=6))
    with torch.no_grad():  # move h off the identity so J_S is far from trivial
        for p in h.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = f(torch.randn(3, 3, 6, 6)).detach()  # (B, 4, 6, 6)
    exact = float(jacobian_term_exact(x, h, g_s, g_t))
    gen = torch.Generator().manual_seed(0)
    k = 400
    for dist in ("gaussian", "rademacher"):
        samples = []
        for _ in range(4):  # 4 batches of 100 probes; the spread gives the sampling error
            t = back_distillation_loss(
                x,
                h,
                g_s,
                g_t,
                probes=k // 4,
                normalise="none",
                probe_dist=dist,
                generator=gen,
                lambda_jac=1.0,
            )
            samples.append(float(t.loss_jac.detach()))
        est = sum(samples) / len(samples)
        # Var of one Gaussian probe is ≤ 2‖A‖²_F², so 400 probes give a relative std ≤ sqrt(2/400) ≈ 7%.
        assert abs(est - exact) / exact < 0.25, (dist, est, exact)


class PiecewiseLinear(nn.Module):
    """x → W2 relu(W1 x + b1) + b2 on flattened inputs, with an explicit transposed 'back network'."""

    def __init__(self, d_in: int, d_hid: int, d_out: int) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(d_in, d_hid), nn.Linear(d_hid, d_out)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))

    def back(self, x, v):
        """J(x)ᵀ v with the forward ReLU masks fixed: the paper's gradient-propagation network."""
        mask = (self.l1(x) > 0).to(x.dtype)  # (B, d_hid), fixed by the forward pass
        return ((v @ self.l2.weight) * mask) @ self.l1.weight  # (B, d_in)


def test_double_backward_equals_explicit_back_network():
    torch.manual_seed(0)
    g_s, g_t = PiecewiseLinear(5, 7, 3), PiecewiseLinear(5, 6, 3)
    h = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 5))
    x = torch.randn(4, 5)
    v = torch.randint(0, 2, (4, 3)).float() * 2 - 1
    gen = torch.Generator().manual_seed(3)
    # The autograd path: the loss draws its own probe from `gen`; reproduce it below.
    t = back_distillation_loss(x, h, g_s, g_t, lambda_jac=1.0, probes=1, normalise="none", generator=gen)
    v = torch.randint(0, 2, (4, 3), generator=torch.Generator().manual_seed(3)).float() * 2 - 1
    grads = torch.autograd.grad(t.loss_jac, list(h.parameters()), allow_unused=True)

    # The explicit path: J_{g_S∘h}ᵀ v = J_hᵀ (back_S(h(x), v)) with all masks fixed, then ordinary backward.
    hp = list(h.parameters())
    z1 = h[0](x)
    m_h = (z1 > 0).float()
    u = h[2](torch.relu(z1))  # (B, 5) adapter output
    w = g_s.back(u.detach(), v)  # (B, 5); masks of g_S at u (piecewise-constant in u)
    js_v = ((w @ h[2].weight) * m_h) @ h[0].weight  # (B, 5)
    jt_v = g_t.back(x, v)
    explicit = (js_v - jt_v).pow(2).sum(1).mean()
    assert torch.allclose(explicit, t.loss_jac, rtol=1e-5, atol=1e-6)
    grads_explicit = torch.autograd.grad(explicit, hp, allow_unused=True)
    for p, a, b in zip(hp, grads, grads_explicit, strict=True):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def _full_double_backward(x, h, g_s, g_t, v, output_loss="mse"):
    """The loss with the double backward through g_S as well (the exact gradient for any g_S)."""
    x_t, x_s = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_t, y_s = g_t(x_t), g_s(h(x_s))
    (jt_v,) = torch.autograd.grad(y_t, x_t, v)
    (js_v,) = torch.autograd.grad(y_s, x_s, v, create_graph=True)
    sq = (js_v - jt_v).flatten(1).pow(2).sum(1) / jt_v.flatten(1).pow(2).sum(1)
    return distillation_loss(y_s, y_t.detach(), output_loss) + sq.mean()


def _grads(loss, h):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(h.parameters()))])


@pytest.mark.parametrize("output_loss", ["mse", "kl"])
def test_gradient_equals_full_double_backward_for_piecewise_linear_student(output_loss):
    """With a ReLU g_S the double backward through h alone gives the exact gradient of the loss."""
    torch.manual_seed(0)
    g_s = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    g_t = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 5))
    h = build_adapter(fit_adapter_config((4, 6, 6), (4, 6, 6), layers=2, hidden=6, kernel_size=3))
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 4, 6, 6)
    gen = torch.Generator().manual_seed(5)
    t = back_distillation_loss(x, h, g_s, g_t, output_loss=output_loss, generator=gen)
    v = torch.randint(0, 2, (3, 5), generator=torch.Generator().manual_seed(5)).float() * 2 - 1
    exact = _full_double_backward(x, h, g_s, g_t, v, output_loss)
    assert torch.allclose(t.loss, exact, rtol=1e-5, atol=1e-6)
    assert torch.allclose(_grads(t.loss, h), _grads(exact, h), rtol=1e-4, atol=1e-6)
    assert not curvature_matters(x, h, g_s, g_t, output_loss=output_loss)


def test_gradient_for_smooth_student_drops_only_its_curvature():
    """With a GELU g_S the cheap gradient drops g_S's curvature; curvature_matters says so, and
    student_curvature=True gives the exact gradient."""
    torch.manual_seed(1)
    g_s = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5))
    g_t = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 5))
    h = build_adapter(fit_adapter_config((4, 6, 6), (4, 6, 6), layers=2, hidden=6, kernel_size=3))
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(8, 4, 6, 6)
    t = back_distillation_loss(x, h, g_s, g_t, generator=torch.Generator().manual_seed(2))
    v = torch.randint(0, 2, (8, 5), generator=torch.Generator().manual_seed(2)).float() * 2 - 1
    exact = _full_double_backward(x, h, g_s, g_t, v)
    a, b = _grads(t.loss, h), _grads(exact, h)
    assert torch.allclose(t.loss, exact, rtol=1e-5)  # the same loss value
    assert not torch.allclose(a, b, rtol=1e-4, atol=1e-6)  # the curvature term is really dropped
    assert curvature_matters(x, h, g_s, g_t)
    kept = back_distillation_loss(x, h, g_s, g_t, generator=torch.Generator().manual_seed(2),
                                  student_curvature=True)
    assert torch.allclose(_grads(kept.loss, h), b, rtol=1e-4, atol=1e-6)


def test_gradients_reach_adapter_only(nets):
    f, g_t, g_s = nets
    h = build_adapter(fit_adapter_config((4, 6, 6), (4, 6, 6), layers=1))
    x = f(torch.randn(2, 3, 6, 6)).detach()
    with frozen(g_t, g_s):
        t = back_distillation_loss(x, h, g_s, g_t, lambda_jac=1.0, probes=2)
        t.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in h.parameters())
    assert all(p.grad is None for m in (g_t, g_s) for p in m.parameters())
    assert all(p.requires_grad for m in (g_t, g_s) for p in m.parameters())  # flags restored
