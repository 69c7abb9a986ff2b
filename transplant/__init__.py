"""Graft's science in pure PyTorch: adapters, back-distillation, metrics and the benchmark world."""

from transplant.adapters import AdapterConfig, build_adapter, fit_adapter_config, load_adapter, save_adapter
from transplant.distill.trainer import TrainConfig, Trainer
from transplant.errors import Cancelled, ShapeMismatch, TrainingDiverged
from transplant.run import METHODS, TransplantResult, run_transplant

__all__ = [
    "METHODS",
    "AdapterConfig",
    "Cancelled",
    "ShapeMismatch",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TransplantResult",
    "build_adapter",
    "fit_adapter_config",
    "load_adapter",
    "run_transplant",
    "save_adapter",
]
