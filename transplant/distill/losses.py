"""The three training signals for an adapter h between a fixed f and a fixed task module g_S.

Notation: x = f(I) are the features (fixed), y_S = g_S(h(x)) the student output, y_T = g_T(x) the
teacher's. Only h has trainable parameters; g_S and g_T are black boxes we differentiate through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Module = Callable[[torch.Tensor], torch.Tensor]
EPS = 1e-12


def supervised_loss(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Task loss: cross-entropy for integer labels ((B,) or dense (B, H, W)), MSE for float targets."""
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return F.cross_entropy(y_pred, y.long())  # logits (B, K) or (B, K, H, W)
    return F.mse_loss(y_pred, y)


def output_loss_for(kind: str, y_t: torch.Tensor) -> str:
    """The output loss "auto" stands for: "kl" for class logits (N, K ≥ 2), "mse" for anything else."""
    if kind != "auto":
        return kind
    return "kl" if y_t.dim() == 2 and y_t.shape[1] >= 2 else "mse"


def distillation_loss(
    y_s: torch.Tensor, y_t: torch.Tensor, kind: str = "mse", temperature: float = 1.0
) -> torch.Tensor:
    """Match the teacher's outputs: "mse" on raw outputs/logits, "kl" on softmax over dim 1 at
    `temperature` (scaled by T² so gradients keep their size), or "auto" (see output_loss_for)."""
    kind = output_loss_for(kind, y_t)
    if kind == "mse":
        return F.mse_loss(y_s, y_t)
    if kind == "kl":
        t = temperature
        log_p_s = F.log_softmax(y_s / t, dim=1)
        log_p_t = F.log_softmax(y_t / t, dim=1)
        # Summed over classes, averaged over every other position (batch and pixels).
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
        return kl.mean() * t * t
    raise ValueError(f"unknown output loss {kind!r} (use 'mse', 'kl' or 'auto')")


@dataclass
class BackDistillTerms:
    """The pieces of one back-distillation loss evaluation."""

    loss: torch.Tensor
    """loss_out + lambda_jac · loss_jac (differentiable with respect to h)."""
    loss_out: torch.Tensor
    """Output-matching term ℓ(y_S, y_T)."""
    loss_jac: torch.Tensor
    """Jacobian-matching term (probe estimate, normalised as asked)."""
    y_s: torch.Tensor
    """Student outputs (B, ...)."""


def _probe(like: torch.Tensor, dist: str, generator: torch.Generator | None) -> torch.Tensor:
    """A random output direction v with E[v vᵀ] = I, shaped like the outputs."""
    if dist == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return bits.to(like.dtype) * 2 - 1
    if dist == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    raise ValueError(f"unknown probe distribution {dist!r} (use 'rademacher' or 'gaussian')")


@dataclass
class TeacherProbes:
    """The teacher's side of back-distillation, computed once per transplant (g_T and x are fixed)."""

    y: torch.Tensor
    """Teacher outputs g_T(x) (N, ...)."""
    v: torch.Tensor
    """K probe directions per sample (N, K, ...), shaped like the outputs."""
    jt_v: torch.Tensor
    """J_{g_T}(x)ᵀv for each probe (N, K, ...), shaped like the features."""

    def __getitem__(self, idx: torch.Tensor) -> TeacherProbes:
        return TeacherProbes(self.y[idx], self.v[idx], self.jt_v[idx])


@torch.no_grad()
def teacher_probes(g_teacher: Module, x: torch.Tensor, k: int, *, probe_dist: str = "rademacher",
                   generator: torch.Generator | None = None, batch_size: int = 64) -> TeacherProbes:
    """g_T(x) and k vector–Jacobian products J_Tᵀv per sample, by one backward per probe and batch."""
    ys, vs, jts = [], [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].detach().requires_grad_(True)  # (b, ...)
        with torch.enable_grad():
            yb = g_teacher(xb)  # (b, ...)
            v = torch.stack([_probe(yb, probe_dist, generator) for _ in range(k)], 1)  # (b, k, ...)
            jt = [torch.autograd.grad(yb, xb, v[:, j], retain_graph=j < k - 1)[0] for j in range(k)]
        ys.append(yb.detach())
        vs.append(v)
        jts.append(torch.stack(jt, 1))  # (b, k, ...)
    return TeacherProbes(torch.cat(ys), torch.cat(vs), torch.cat(jts))


def _output_loss_grad(y_s: torch.Tensor, y_t: torch.Tensor, kind: str, temperature: float) -> tuple:
    """(ℓ(y_s, y_t), ∂ℓ/∂y_s) for a y_s that is not part of any graph."""
    y = y_s.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = distillation_loss(y, y_t, kind, temperature)
        (grad,) = torch.autograd.grad(loss, y)
    return loss.detach(), grad


def back_distillation_loss(
    x: torch.Tensor,
    adapter: nn.Module,
    g_student: Module,
    g_teacher: Module,
    *,
    lambda_jac: float = 1.0,
    probes: int = 1,
    normalise: str = "probe",
    output_loss: str = "mse",
    temperature: float = 1.0,
    probe_dist: str = "rademacher",
    generator: torch.Generator | None = None,
    student_curvature: bool = False,
    teacher: TeacherProbes | None = None,
) -> BackDistillTerms:
    """Outputs + Jacobian matching: ℓ(y_S, y_T) + λ·E_v‖J_Sᵀv − J_Tᵀv‖² by K vector–Jacobian probes.

    J_S is the Jacobian of g_S∘h and J_T of g_T, both with respect to the features x (B, ...). J_Sᵀv is
    J_hᵀ(J_{g_S}(z)ᵀv) at z = h(x): the task module's part is one plain backward at the detached point z
    (the paper's gradient-propagation network, g_S's ReLU masks fixed by the forward pass), and only the
    adapter's part is built with create_graph=True, so the double backward runs through h alone, never
    through g_S (whose grouped/depthwise convolutions make a double backward 6-13x a step on CPU). For a
    piecewise-linear g_S (ReLU, pooling, convolutions, BatchNorm in eval) this is the exact gradient;
    for smooth activations it drops the curvature of g_S, and `student_curvature=True` keeps it by
    differentiating through g_S as well (`curvature_matters` tells which a task module needs).
    No Jacobian is ever materialised. `normalise`: "probe" divides each sample's squared error by
    ‖J_Tᵀv‖² of the same probe (scale-free, the default), "batch" divides the batch sum by the batch sum
    of ‖J_Tᵀv‖², "none" leaves the unbiased estimate of ‖J_S−J_T‖²_F.

    `teacher`: the batch's precomputed teacher outputs and probes (`teacher_probes`); `probes` of each
    sample's stored probes are drawn per call and g_T is never run. Without it, `probes` fresh probes are
    drawn and g_T is run and differentiated here.
    """
    if teacher is None:
        teacher = _fresh_teacher(g_teacher, x, probes, probe_dist, generator)
    else:  # `probes` of each sample's stored probes
        pick = torch.randint(0, teacher.v.shape[1], (x.shape[0], probes), generator=generator,
                             device=x.device)
        teacher = TeacherProbes(teacher.y, _take(teacher.v, pick), _take(teacher.jt_v, pick))
    y_t = teacher.y.detach()
    x_s = x.detach().requires_grad_(True)  # (B, ...) features, a leaf for the adapter's VJP
    with torch.enable_grad():
        z = adapter(x_s)  # (B, ...) adapter output, attached to h's parameters
        if student_curvature:
            return _through_student(x_s, y_t, teacher, z, g_student, lambda_jac, normalise, output_loss,
                                    temperature)
        z_d = z.detach().requires_grad_(True)  # g_S is differentiated at z, not through it
        y_s = g_student(z_d)  # (B, ...) student output
        loss_out, dl_dy = _output_loss_grad(y_s, y_t, output_loss, temperature)
        # ∂ℓ/∂z, then a surrogate whose gradient with respect to h is exactly ∂ℓ/∂h.
        (dl_dz,) = torch.autograd.grad(y_s, z_d, dl_dy, retain_graph=True)
        surrogate = (z * dl_dz).sum()
        out_term = loss_out + surrogate - surrogate.detach()
        k, terms = teacher.v.shape[1], []
        for i in range(k):
            (u,) = torch.autograd.grad(y_s, z_d, teacher.v[:, i], retain_graph=i < k - 1)  # J_{g_S}(z)ᵀv
            (js_v,) = torch.autograd.grad(z, x_s, u, retain_graph=True, create_graph=True)  # J_hᵀu
            terms.append(_jacobian_error(js_v, teacher.jt_v[:, i], normalise))
        loss_jac = torch.stack(terms).mean()
    return BackDistillTerms(out_term + lambda_jac * loss_jac, loss_out, loss_jac, y_s.detach())


def _take(t: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """t[b, pick[b, j]] for each sample b and pick j: (B, K, ...) → (B, P, ...)."""
    index = pick.view(*pick.shape, *([1] * (t.dim() - 2))).expand(*pick.shape, *t.shape[2:])
    return t.gather(1, index)


def _fresh_teacher(g_teacher: Module, x: torch.Tensor, probes: int, probe_dist: str,
                   generator: torch.Generator | None) -> TeacherProbes:
    """The teacher's outputs and `probes` fresh probes with their VJPs on this batch."""
    return teacher_probes(g_teacher, x, probes, probe_dist=probe_dist, generator=generator,
                          batch_size=max(1, x.shape[0]))


def _jacobian_error(js_v: torch.Tensor, jt_v: torch.Tensor, normalise: str) -> torch.Tensor:
    """‖J_Sᵀv − J_Tᵀv‖² of one probe, averaged over the batch and scaled as `normalise` asks."""
    sq_err = (js_v - jt_v).flatten(1).pow(2).sum(1)  # (B,)
    ref = jt_v.flatten(1).pow(2).sum(1)  # (B,)
    if normalise == "probe":
        return (sq_err / (ref + EPS)).mean()
    if normalise == "batch":
        return sq_err.sum() / (ref.sum() + EPS)
    if normalise == "none":
        return sq_err.mean()
    raise ValueError(f"unknown normalise {normalise!r} (use 'probe', 'batch' or 'none')")


def _through_student(x_s, y_t, teacher, z, g_student, lambda_jac, normalise, output_loss,  # noqa: ANN001
                     temperature) -> BackDistillTerms:
    """The loss with the double backward through g_S too: the exact gradient for a smooth g_S."""
    y_s = g_student(z)
    loss_out = distillation_loss(y_s, y_t, output_loss, temperature)
    terms = []
    for i in range(teacher.v.shape[1]):
        (js_v,) = torch.autograd.grad(y_s, x_s, teacher.v[:, i], retain_graph=True, create_graph=True)
        terms.append(_jacobian_error(js_v, teacher.jt_v[:, i], normalise))
    loss_jac = torch.stack(terms).mean()
    return BackDistillTerms(loss_out + lambda_jac * loss_jac, loss_out, loss_jac, y_s.detach())


def curvature_matters(x: torch.Tensor, adapter: nn.Module, g_student: Module, g_teacher: Module,
                      rtol: float = 1e-3, **options) -> bool:
    """Whether g_S's curvature changes the loss's gradient at these features (False: piecewise linear).

    One gradient of each kind on the same probes, compared; run once per transplant on a few samples.
    """
    grads = []
    for curvature in (False, True):
        gen = torch.Generator(device=x.device).manual_seed(0)
        t = back_distillation_loss(x, adapter, g_student, g_teacher, generator=gen,
                                   student_curvature=curvature, **options)
        params = [p for p in adapter.parameters() if p.requires_grad]
        found = torch.autograd.grad(t.loss, params, allow_unused=True)
        grads.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                                for p, g in zip(params, found, strict=True)]))
    a, b = grads
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return False  # nothing to compare; training reports the divergence at its first step
    return not torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max()) + 1e-12)


def jacobian_term_exact(
    x: torch.Tensor, adapter: nn.Module, g_student: Module, g_teacher: Module
) -> torch.Tensor:
    """Mean over the batch of the exact ‖J_{g_S∘h}(x_i) − J_{g_T}(x_i)‖²_F (for tests; builds Jacobians)."""
    totals = []
    for xi in x:  # per sample: (...) → (1, ...)

        def student(z: torch.Tensor) -> torch.Tensor:
            return g_student(adapter(z.unsqueeze(0))).squeeze(0)

        def teacher(z: torch.Tensor) -> torch.Tensor:
            return g_teacher(z.unsqueeze(0)).squeeze(0)

        j_s = torch.autograd.functional.jacobian(student, xi)  # (*out, *in)
        j_t = torch.autograd.functional.jacobian(teacher, xi)
        totals.append((j_s - j_t).pow(2).sum())
    return torch.stack(totals).mean()
