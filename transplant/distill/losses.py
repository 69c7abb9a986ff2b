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


def distillation_loss(
    y_s: torch.Tensor, y_t: torch.Tensor, kind: str = "mse", temperature: float = 1.0
) -> torch.Tensor:
    """Match the teacher's outputs: "mse" on raw outputs/logits (default) or "kl" on softmax over dim 1."""
    if kind == "mse":
        return F.mse_loss(y_s, y_t)
    if kind == "kl":
        t = temperature
        log_p_s = F.log_softmax(y_s / t, dim=1)
        log_p_t = F.log_softmax(y_t / t, dim=1)
        # Summed over classes, averaged over every other position (batch and pixels).
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
        return kl.mean() * t * t
    raise ValueError(f"unknown output loss {kind!r} (use 'mse' or 'kl')")


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
    probe_dist: str = "rademacher",
    generator: torch.Generator | None = None,
) -> BackDistillTerms:
    """Outputs + Jacobian matching: ℓ(y_S, y_T) + λ·E_v‖J_Sᵀv − J_Tᵀv‖² by K vector–Jacobian probes.

    J_S is the Jacobian of g_S∘h and J_T of g_T, both with respect to the features x (B, ...).
    The student's VJP is built with create_graph=True so the term can be differentiated with respect
    to h (double backward); no Jacobian is ever materialised. `normalise`: "probe" divides each
    sample's squared error by ‖J_Tᵀv‖² of the same probe (scale-free, our default), "batch" divides
    the batch sum by the batch sum of ‖J_Tᵀv‖², "none" leaves the unbiased estimate of ‖J_S−J_T‖²_F.
    """
    x_t = x.detach().requires_grad_(True)  # (B, ...) features, a leaf for the teacher's VJP
    x_s = x.detach().requires_grad_(True)  # a separate leaf so the two graphs never mix
    with torch.enable_grad():
        y_t = g_teacher(x_t)  # (B, ...) teacher output
        y_s = g_student(adapter(x_s))  # (B, ...) student output
        loss_out = distillation_loss(y_s, y_t.detach(), output_loss)
        terms = []
        for _ in range(probes):
            v = _probe(y_t, probe_dist, generator)  # (B, ...) like the outputs
            (jt_v,) = torch.autograd.grad(y_t, x_t, v, retain_graph=True)  # (B, ...) like x
            (js_v,) = torch.autograd.grad(y_s, x_s, v, retain_graph=True, create_graph=True)
            sq_err = (js_v - jt_v.detach()).flatten(1).pow(2).sum(1)  # (B,)
            ref = jt_v.detach().flatten(1).pow(2).sum(1)  # (B,)
            if normalise == "probe":
                terms.append((sq_err / (ref + EPS)).mean())
            elif normalise == "batch":
                terms.append(sq_err.sum() / (ref.sum() + EPS))
            elif normalise == "none":
                terms.append(sq_err.mean())
            else:
                raise ValueError(f"unknown normalise {normalise!r} (use 'probe', 'batch' or 'none')")
        loss_jac = torch.stack(terms).mean()
    return BackDistillTerms(loss_out + lambda_jac * loss_jac, loss_out, loss_jac, y_s)


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
