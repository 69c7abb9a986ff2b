"""Losses and a method-agnostic trainer for learning adapters."""

from transplant.distill.losses import (
    back_distillation_loss,
    distillation_loss,
    jacobian_term_exact,
    supervised_loss,
)
from transplant.distill.trainer import TrainConfig, Trainer

__all__ = [
    "TrainConfig",
    "Trainer",
    "back_distillation_loss",
    "distillation_loss",
    "jacobian_term_exact",
    "supervised_loss",
]
