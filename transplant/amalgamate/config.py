"""Configs and result types of knowledge amalgamation (Shen et al., AAAI 2019)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

Module = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StudentConfig:
    """Architecture of the student: a plain conv stack, a global average pool and a linear head.

    Block l is conv(k_l × k_l) → FAM (1×1 conv, folded away after training) → max-pool(p_l) → ReLU.
    """

    input_shape: tuple[int, int, int]
    """(C, H, W) of one input sample."""
    widths: tuple[int, ...] = (32, 64)
    """Output channels of each conv block; also the bottleneck width of that block's auto-encoder."""
    kernel_sizes: tuple[int, ...] | None = None
    """Kernel size per block (odd, 'same' padding); None means 3 everywhere."""
    pools: tuple[int, ...] | None = None
    """Max-pool factor per block (1 = no pooling); None means 2 everywhere."""
    head_hidden: tuple[int, ...] = ()
    """Hidden widths of an MLP head (ReLU between); () gives a single linear layer."""

    def __post_init__(self) -> None:
        n = len(self.widths)
        self.kernel_sizes = tuple(self.kernel_sizes or (3,) * n)
        self.pools = tuple(self.pools or (2,) * n)
        if n == 0 or len(self.kernel_sizes) != n or len(self.pools) != n:
            raise ValueError("widths, kernel_sizes and pools need one entry per block (at least one)")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError("kernel sizes must be odd ('same' padding)")


@dataclass
class AmalgamationConfig:
    """Training settings of `amalgamate` and `distill_logits_baseline`."""

    epochs_per_layer: int = 20
    """Epochs of step 2 for each group of student blocks (blocks without a target join the next)."""
    head_epochs: int = 20
    """Epochs regressing the merged teacher logits with the student's features frozen."""
    finetune_epochs: int = 20
    """Epochs of the joint fine-tune of all student weights on the merged logits (step 3)."""
    lr: float = 3e-3
    """Adam learning rate of the layer-wise and head stages (and of the baseline)."""
    finetune_lr: float = 2e-3
    """Adam learning rate of the joint fine-tune."""
    batch_size: int = 64
    """Mini-batch size (all stages)."""
    seed: int = 0
    """Seeds the student's initialisation and the batch order; global RNG state is left untouched."""
    device: str = "cpu"
    """Where the student trains and the teachers run ('cpu', 'cuda', …)."""
    teacher_batch_size: int = 256
    """Batch size used to run the (frozen) teachers over the inputs once."""
    fam_init: str = "identity"
    """Initial FAM weights: 'identity' (the block starts as a plain conv) or 'default' (PyTorch init)."""


@dataclass
class Teacher:
    """A frozen teacher classifier: logits = head(feature(x)) over `classes`.

    With `layers` (callables whose composition is `feature`) every stage's output can become a layer-wise
    target; without them (black boxes: torch.export / TorchScript modules with only f and g) the output of
    `feature` is the single intermediate target, besides the logits.
    """

    feature: Module
    """x (B, C, H, W) → features (B, D) or (B, D, h, w)."""
    head: Module
    """features → logits (B, len(classes))."""
    classes: list[str]
    """Class names, in the order of the head's logits."""
    layers: Sequence[Module] | None = None
    """Optional stages of `feature`, applied in order; their outputs are the teacher's intermediates."""

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("a teacher's class names must be unique")


@dataclass
class AmalgamationResult:
    """What an amalgamation (or the baseline) produced; both modules are in eval mode, on CPU."""

    category_module: nn.Module
    """The student's feature extractor: x (B, C, H, W) → features (B, widths[-1]); FAMs folded."""
    task_module: nn.Module
    """The student's head: features → logits (B, len(classes))."""
    classes: list[str]
    """Union of the teachers' classes (first-seen order), the order of the logits."""
    metrics: dict = field(default_factory=dict)
    """Parameter counts, per-stage losses, auto-encoder explained variance, agreement with the teachers…"""
    history: list[dict] = field(default_factory=list)
    """One record per epoch: {"stage", "layer", "epoch", "epochs", "loss"}."""
