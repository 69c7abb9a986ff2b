"""Task metrics on logits: accuracy, dense mIoU / pixel accuracy, agreement with a teacher."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of logits (B, K) against labels (B,)."""
    return float((logits.argmax(1) == y).float().mean())


def pixel_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of pixels whose argmax class (B, K, H, W) matches the label map (B, H, W)."""
    return float((logits.argmax(1) == y).float().mean())


def mean_iou(logits: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """Mean intersection-over-union over the classes present in the labels or the predictions."""
    k = num_classes or logits.shape[1]
    pred = logits.argmax(1).flatten()  # (B·H·W,)
    true = y.flatten().long()
    ious = []
    for c in range(k):
        p, t = pred == c, true == c
        union = (p | t).sum()
        if union > 0:  # a class absent from both says nothing about the model
            ious.append(float((p & t).sum()) / float(union))
    return sum(ious) / max(1, len(ious))


def agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """How often the student's argmax over dim 1 equals the teacher's (per sample or per pixel)."""
    if student.dim() < 2:
        raise ValueError("agreement needs outputs with a class dimension (B, K, ...)")
    return float((student.argmax(1) == teacher.argmax(1)).float().mean())


def task_metric(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """The task's headline metric: accuracy for (B,) labels, mIoU + pixel accuracy for dense labels."""
    if y.dtype.is_floating_point:
        return {"task_metric": -float(torch.mean((logits - y) ** 2)), "metric_name": "neg_mse"}
    if logits.dim() == 2:
        return {"task_metric": accuracy(logits, y), "metric_name": "accuracy"}
    return {
        "task_metric": mean_iou(logits, y),
        "metric_name": "miou",
        "pixel_accuracy": pixel_accuracy(logits, y),
    }
