"""Errors raised by the transplant engine (no web or database imports here)."""

from __future__ import annotations


class TransplantError(Exception):
    """Base class of the engine's errors."""


class ShapeMismatch(TransplantError, ValueError):
    """No adapter architecture can map the category module's output to the task module's input."""

    def __init__(self, in_shape: tuple, out_shape: tuple, reason: str = "") -> None:
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        msg = f"cannot adapt features of shape {self.in_shape} to input shape {self.out_shape}"
        super().__init__(f"{msg}: {reason}" if reason else msg)


class TrainingDiverged(TransplantError, RuntimeError):
    """The loss became NaN or infinite during training."""


class Cancelled(TransplantError):
    """Training was stopped because `should_stop()` returned True."""

    status = "cancelled"


class UnknownMethod(TransplantError, ValueError):
    """The requested transplant method or adapter architecture is not registered."""
