"""Amalgamation targets: the union of classes, merged teacher logits, and per-layer compact features.

Choices (stated, not guessed):
- Classes: the union in first-seen order. A class several teachers know gets the mean of their logits
  for it, each teacher's logits first centred per sample (softmax ignores a per-sample shift, so only
  centred logits are comparable between teachers).
- Depth mapping: student block l (of L) takes teacher stage ⌊(l+1)·n/L⌋ − 1 of a teacher with n stages,
  none when that is −1. Proportional depth; the last block always takes the teacher's final feature, so
  a black-box teacher (n = 1) supervises only the last block. Blocks without any target are trained
  together with the next block that has one.
- Spatial sizes: teacher maps are adaptively average-pooled to the block's output size; when any teacher
  feature at a block is a vector, every feature there (and the student's) is globally pooled.
- Before concatenation each teacher's features are centred per channel and scaled to unit total
  variance, so a wide teacher does not drown a narrow one in the auto-encoder.
- The linear auto-encoder is solved in closed form: the minimiser of its reconstruction error spans the
  top principal components, so the encoder is the PCA projection (decoder = its transpose).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transplant.amalgamate.config import Teacher


def union_classes(teachers: Sequence[Teacher]) -> list[str]:
    """The union of the teachers' classes, in first-seen order."""
    seen: dict[str, None] = {}
    for t in teachers:
        seen.update(dict.fromkeys(t.classes))
    return list(seen)


def merged_logits(
    logits: Sequence[torch.Tensor], teachers: Sequence[Teacher], classes: list[str]
) -> torch.Tensor:
    """Per-teacher centred logits (B, K_t) merged into (B, U): the mean over the teachers of each class."""
    n = logits[0].shape[0]
    total = logits[0].new_zeros(n, len(classes))
    count = logits[0].new_zeros(len(classes))
    for z, t in zip(logits, teachers, strict=True):
        idx = torch.tensor([classes.index(c) for c in t.classes], device=z.device)
        total.index_add_(1, idx, z - z.mean(1, keepdim=True))
        count.index_add_(0, idx, torch.ones(len(idx), device=z.device))
    return total / count  # every union class has at least one teacher


def stage_for_block(n_stages: int, n_blocks: int) -> list[int | None]:
    """Which teacher stage supervises each student block (None: no target from this teacher)."""
    out: list[int | None] = []
    for block in range(n_blocks):
        j = (block + 1) * n_stages // n_blocks - 1
        out.append(j if j >= 0 else None)
    return out


@torch.no_grad()
def run_teacher(teacher: Teacher, x: torch.Tensor, batch_size: int, device: torch.device):
    """Intermediates [(N, D_j[, h, w])] and logits (N, K) of a frozen teacher over x, on `device`."""
    stages, logits = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(device)
        if teacher.layers:
            outs, h = [], xb
            for layer in teacher.layers:
                h = layer(h)
                outs.append(h)
            if i == 0 and not torch.allclose(h, teacher.feature(xb), atol=1e-4, rtol=1e-4):
                raise ValueError("a teacher's layers do not compose to its feature module")
        else:
            outs = [teacher.feature(xb)]
        stages.append(outs)
        logits.append(teacher.head(outs[-1]))
    return [torch.cat(s) for s in zip(*stages, strict=True)], torch.cat(logits)


@dataclass
class LinearAutoEncoder:
    """x (M, D) ↦ code (x − mean) @ encoder (M, w); decode: code @ encoder.T + mean."""

    mean: torch.Tensor  # (D,)
    encoder: torch.Tensor  # (D, w), orthonormal columns
    explained: float  # fraction of the variance the code keeps

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.encoder

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return code @ self.encoder.T + self.mean


def fit_autoencoder(x: torch.Tensor, width: int) -> LinearAutoEncoder:
    """The optimal linear auto-encoder of x (M, D) with a bottleneck of min(width, D) units."""
    x = x.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(1, x.shape[0] - 1)  # (D, D)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    k = min(width, x.shape[1])
    explained = float(evals[-k:].sum() / evals.sum().clamp_min(1e-12))
    enc = evecs[:, -k:].flip(1)  # (D, k), strongest component first
    return LinearAutoEncoder(mean.float(), enc.float(), explained)


def _normalise(f: torch.Tensor) -> torch.Tensor:
    """Centre each channel, then scale the whole feature to unit total variance."""
    dims = [0, *range(2, f.dim())]
    f = f - f.mean(dims, keepdim=True)
    return f / f.var(dims).sum().sqrt().clamp_min(1e-8)


def compact_target(feats: Sequence[torch.Tensor], shape: tuple[int, int, int]):
    """Teacher features at a block of shape (C, h, w) → (code (N, k[, h, w]), auto-encoder, spatial?)."""
    width, h, w = shape
    spatial = all(f.dim() == 4 for f in feats)
    parts = []
    for f in feats:
        if spatial:
            f = F.adaptive_avg_pool2d(f, (h, w))  # (N, D, h, w)
        elif f.dim() == 4:
            f = f.mean((2, 3))  # (N, D)
        elif f.dim() != 2:
            raise ValueError(f"teacher features must be (N, D) or (N, D, h, w), got {tuple(f.shape)}")
        parts.append(_normalise(f))
    cat = torch.cat(parts, 1)  # (N, ΣD[, h, w])
    rows = cat.movedim(1, -1).reshape(-1, cat.shape[1])  # every position is a sample of the 1×1 AE
    ae = fit_autoencoder(rows, width)
    code = ae.encode(rows).reshape(*cat.movedim(1, -1).shape[:-1], -1).movedim(-1, 1)  # (N, k[, h, w])
    return code.contiguous(), ae, spatial
