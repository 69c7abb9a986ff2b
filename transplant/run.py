"""run_transplant: the one entry point the job worker calls to learn an adapter."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transplant.adapters import (
    AdapterConfig,
    adapter_spec,
    build_adapter,
    config_from_spec,
    fit_adapter_config,
    init_adapter,
)
from transplant.blackbox import batched_apply, frozen
from transplant.distill.losses import (
    TeacherProbes,
    back_distillation_loss,
    curvature_matters,
    distillation_loss,
    output_loss_for,
    supervised_loss,
    teacher_probes,
)
from transplant.distill.trainer import TrainConfig, Trainer
from transplant.errors import UnknownMethod
from transplant.metrics import agreement, task_metric

Module = Callable[[torch.Tensor], torch.Tensor]
METHODS = ("supervised", "distillation", "back_distillation")


@dataclass
class TransplantResult:
    """What a transplant produced."""

    adapter: nn.Module
    """The trained adapter h (eval mode, on CPU)."""
    config: AdapterConfig
    """Its architecture."""
    spec: dict
    """JSON spec of the architecture (see adapters.adapter_spec)."""
    metrics: dict = field(default_factory=dict)
    """teacher_agreement, val_loss, task_metric (with labels), n_train, n_val, steps, wall_s, …"""
    history: list[dict] = field(default_factory=list)
    """Per-epoch records from the trainer."""


def _resolve_adapter(adapter: AdapterConfig | dict | None, in_shape: tuple) -> AdapterConfig:
    """An AdapterConfig from a config, a spec / override dict, or None (fitted to the shapes)."""
    if isinstance(adapter, AdapterConfig):
        return adapter
    overrides = dict(adapter or {})
    if "config" in overrides:  # a full spec as produced by adapter_spec
        return config_from_spec(overrides)
    # Without an explicit out_shape the student task module is assumed to take what g_T takes.
    out_shape = tuple(overrides.pop("out_shape", in_shape))
    overrides.pop("in_shape", None)
    return fit_adapter_config(in_shape, out_shape, **overrides)


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train / val index split; val may be empty."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    n_val = min(n_val, n - 1)
    return perm[n_val:], perm[:n_val]


def _objective(method: str, h: nn.Module, g_s: Module, g_t: Module, cfg: TrainConfig, gen: torch.Generator,
               student_curvature: bool = False):
    """The method's loss on a batch (features, teacher outputs, labels[, probes, teacher VJPs]).

    Back-distillation uses the batch's stored probes and teacher VJPs when it carries them (see
    `run_transplant`), else draws fresh probes and runs the teacher.
    """
    if method == "supervised":

        def obj(batch: Sequence[torch.Tensor]) -> dict:
            feats, _, y = batch
            loss = supervised_loss(g_s(h(feats)), y)
            return {"loss": loss, "loss_out": loss}
    elif method == "distillation":

        def obj(batch: Sequence[torch.Tensor]) -> dict:
            feats, y_t = batch[0], batch[1]
            loss = distillation_loss(g_s(h(feats)), y_t, cfg.output_loss, cfg.temperature)
            return {"loss": loss, "loss_out": loss}
    elif method == "back_distillation":

        def obj(batch: Sequence[torch.Tensor]) -> dict:
            teacher = TeacherProbes(batch[1], batch[3], batch[4]) if len(batch) >= 5 else None
            t = back_distillation_loss(batch[0], h, g_s, g_t, generator=gen, teacher=teacher,
                                       student_curvature=student_curvature, **cfg.loss_options())
            return {"loss": t.loss, "loss_out": t.loss_out, "loss_jac": t.loss_jac}
    else:
        raise UnknownMethod(f"unknown method {method!r}; use one of {METHODS}")
    return obj


def _anchored(obj: Callable, h: nn.Module, weight: float, scale: torch.Tensor) -> Callable:
    """obj on the batch without its last column (the reference's features), plus the anchor term."""

    def anchored(batch: Sequence[torch.Tensor]) -> dict:
        out = obj(batch[:-1])
        anchor = torch.nn.functional.mse_loss(h(batch[0]), batch[-1]) / scale
        return {**out, "loss": out["loss"] + weight * anchor, "loss_anchor": anchor}

    return anchored


def check_inputs(method: str, x: torch.Tensor, y: torch.Tensor | None) -> None:
    """Refuse an unknown method, a supervised run without labels, or labels that do not match x."""
    if method not in METHODS:
        raise UnknownMethod(f"unknown method {method!r}; use one of {METHODS}")
    if method == "supervised" and y is None:
        raise ValueError("method 'supervised' needs labels y")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")


def end_metrics(h: nn.Module, g_student: Module, method: str, train_data: list, val_data: list | None,
                labelled: bool) -> dict:
    """Teacher agreement (and the task metric, when labelled) of g_student ∘ h on the held-out inputs
    when there are some, else (small data) on the training inputs; [features, teacher outputs, labels]."""
    on = val_data if val_data is not None else train_data
    with torch.no_grad():
        y_s = batched_apply(lambda z: g_student(h(z)), on[0])
    metrics: dict = {
        "method": method,
        "teacher_agreement": agreement(y_s, on[1]) if y_s.dim() >= 2 else None,
        "metrics_on": "val" if val_data is not None else "train",
    }
    if labelled:
        metrics.update(task_metric(y_s, on[2]))
    return metrics


def resolve_output_loss(cfg: TrainConfig, y_t: torch.Tensor) -> TrainConfig:
    """cfg with output_loss "auto" made concrete for these teacher outputs (recorded in the metrics)."""
    return dataclasses.replace(cfg, output_loss=output_loss_for(cfg.output_loss, y_t))


def run_transplant(
    f: Module,
    g_teacher: Module,
    g_student: Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    method: str,
    adapter: AdapterConfig | dict | None = None,
    train: TrainConfig | None = None,
    callbacks: Sequence[Any] = (),
    should_stop: Callable[[], bool] | None = None,
    reference: Module | None = None,
) -> TransplantResult:
    """Learn h so that g_student(h(f(x))) does what g_teacher(f(x)) does; f and both g stay untouched.

    reference: the generic network's own category module for these inputs, when there is one (its
    features are what g_student natively takes); the adapter then starts as the least-squares stitch
    from f's features to the reference's (`init_adapter`).
    """
    check_inputs(method, x, y)
    cfg = train or TrainConfig()
    device = cfg.resolved_device()
    t0 = time.perf_counter()
    modules = (f, g_teacher, g_student) + ((reference,) if reference is not None else ())
    with frozen(*modules, device=device):
        feats = batched_apply(f, x.float(), device=device)  # (N, *feature_shape), fixed
        config = _resolve_adapter(adapter, tuple(feats.shape[1:]))
        tr_idx, va_idx = _split(x.shape[0], cfg.val_fraction, cfg.seed)
        tr_idx, va_idx = tr_idx.to(device), va_idx.to(device)
        target = None
        if reference is not None:
            target = batched_apply(reference, x.float(), device=device)  # (N, *g_student input shape)
            if tuple(target.shape[1:]) != tuple(config.out_shape):
                raise ValueError(f"the reference category module gives {list(target.shape[1:])}, not the "
                                 f"task module's input {list(config.out_shape)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the adapter's init is part of the seeded run
            h = build_adapter(config).to(device)
        init = init_adapter(h, config, feats[tr_idx], target[tr_idx] if target is not None else None)
        gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        labels = y.to(device) if y is not None else torch.zeros(x.shape[0], device=device)
        extra: dict = {"init": init}
        if method == "back_distillation":
            # The teacher's side is fixed: its outputs and a pool of probes with their VJPs, once.
            pool = teacher_probes(g_teacher, feats, cfg.probe_pool, probe_dist=cfg.probe_dist, generator=gen)
            cfg = resolve_output_loss(cfg, pool.y)
            sample = feats[tr_idx[:8]]
            curvature = curvature_matters(sample, h, g_student, g_teacher, **cfg.loss_options())
            extra["jacobian"] = "through g_S (smooth)" if curvature else "first-order (g_S piecewise linear)"
            data = [feats, pool.y, labels, pool.v, pool.jt_v]
            val_cols = [feats, pool.y, labels, pool.v[:, :1], pool.jt_v[:, :1]]  # one fixed probe each
        else:
            y_t = batched_apply(g_teacher, feats)  # (N, *out_shape) teacher outputs
            cfg = resolve_output_loss(cfg, y_t)
            curvature = False
            data = val_cols = [feats, y_t, labels]
        obj = _objective(method, h, g_student, g_teacher, cfg, gen, curvature)
        if target is not None and cfg.anchor > 0:
            obj = _anchored(obj, h, cfg.anchor, target.var().clamp_min(1e-8))
            data, val_cols = data + [target], val_cols + [target]
        train_data = [t[tr_idx] for t in data]
        val_data = [t[va_idx] for t in val_cols] if len(va_idx) else None
        trainer = Trainer(h, obj, cfg, callbacks=callbacks, should_stop=should_stop)
        history = trainer.fit(train_data, val_data)
        metrics = end_metrics(h, g_student, method, train_data, val_data, y is not None)
        metrics.update(val_loss=trainer.best_val, n_train=int(len(tr_idx)), n_val=int(len(va_idx)),
                       steps=trainer.steps_done, epochs_run=len(history), device=str(device),
                       output_loss=cfg.output_loss, **extra)
    h = h.cpu().eval()
    metrics["wall_s"] = time.perf_counter() - t0
    return TransplantResult(
        adapter=h, config=config, spec=adapter_spec(config), metrics=metrics, history=history
    )
