"""A trainer that knows nothing of the method: it optimises a module on an objective over batches."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from transplant.errors import Cancelled, TrainingDiverged


@dataclass
class TrainConfig:
    """How an adapter is trained, independent of the method."""

    epochs: int = 20
    """Maximum number of epochs."""
    steps_per_epoch: int | None = None
    """Optimiser steps per epoch (the data cycles); None = one pass over the training split."""
    max_steps: int | None = None
    """Hard cap on the total number of optimiser steps (None = no cap)."""
    batch_size: int = 64
    """Samples per optimiser step."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam(W) weight decay on the adapter."""
    seed: int = 0
    """Seeds adapter init, shuffling, the val split and the probes: same seed, same result on CPU."""
    device: str = "cpu"
    """"cpu", "cuda" or "auto" (cuda when available); "cuda" falls back to CPU when there is none."""
    val_fraction: float = 0.2
    """Fraction of the (unlabelled) inputs held out for early stopping and end metrics; 0 = none."""
    patience: int = 5
    """Epochs without val improvement before stopping (needs val_fraction > 0)."""
    lambda_jac: float = 1.0
    """Weight λ of the Jacobian-matching term (back_distillation)."""
    probes: int = 1
    """Random vector–Jacobian probes K per sample and step (back_distillation)."""
    normalise: str = "probe"
    """Scale of the Jacobian term: "probe" (÷‖J_Tᵀv‖² per probe), "batch" or "none"."""
    output_loss: str = "mse"
    """Output-matching loss of distillation / back_distillation: "mse" on outputs/logits or "kl"."""
    probe_dist: str = "rademacher"
    """Distribution of the probes v: "rademacher" or "gaussian" (both have E[v vᵀ] = I)."""
    grad_clip: float | None = 10.0
    """Clip the adapter's gradient norm (None = no clipping)."""

    def loss_options(self) -> dict:
        """The keyword arguments of back_distillation_loss that this config sets."""
        return {"lambda_jac": self.lambda_jac, "probes": self.probes, "normalise": self.normalise,
                "output_loss": self.output_loss, "probe_dist": self.probe_dist}

    def resolved_device(self) -> torch.device:
        """The device training will actually use."""
        want_cuda = self.device in ("cuda", "auto") or self.device.startswith("cuda:")
        if want_cuda and torch.cuda.is_available():
            return torch.device(self.device if self.device.startswith("cuda") else "cuda")
        return torch.device("cpu")


def set_warmup_lr(opt: torch.optim.Optimizer, lr: float, step: int, warmup_steps: int) -> None:
    """The learning rate of step `step` (0-based): lr·(step+1)/warmup_steps during the warmup, then lr."""
    if warmup_steps > 0:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup_steps)


class Callback(Protocol):
    """Progress hooks; both receive a plain dict (see Trainer.fit)."""

    def on_step_end(self, info: dict) -> None: ...

    def on_epoch_end(self, info: dict) -> None: ...


# An objective maps a batch (tuple of tensors) to a dict with "loss" (tensor) and optional
# "loss_out" / "loss_jac" (tensors or floats).
Objective = Callable[[Sequence[torch.Tensor]], dict]


def _call(callbacks: Iterable[Any], name: str, info: dict) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(dict(info))


def _num(v: Any) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


class Trainer:
    """Optimise `module`'s parameters on `objective`; early stopping on `val_objective`."""

    def __init__(
        self,
        module: nn.Module,
        objective: Objective,
        config: TrainConfig,
        *,
        val_objective: Objective | None = None,
        callbacks: Sequence[Any] = (),
        should_stop: Callable[[], bool] | None = None,
        warmup_steps: int = 0,
        optimizer_state: dict | None = None,
    ) -> None:
        """warmup_steps: the learning rate rises linearly to config.lr over the first steps (for weights
        that are already trained: Adam's first steps move every weight by about lr, whatever its gradient).
        optimizer_state: an AdamW state_dict over the same parameters to continue from."""
        self.module = module
        self.objective = objective
        self.val_objective = val_objective or objective
        self.config = config
        self.callbacks = list(callbacks)
        self.should_stop = should_stop
        self.history: list[dict] = []
        self.best_val: float | None = None
        self.steps_done = 0
        self.warmup_steps = warmup_steps
        self.optimizer_state = optimizer_state

    def _batches(self, n: int, gen: torch.Generator, steps: int) -> Iterable[torch.Tensor]:
        """`steps` index batches, reshuffling whenever the data runs out."""
        bs = min(self.config.batch_size, n)
        perm, pos = torch.randperm(n, generator=gen), 0
        for _ in range(steps):
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            yield perm[pos : pos + bs]
            pos += bs

    @torch.no_grad()
    def _snapshot(self) -> dict:
        return copy.deepcopy(self.module.state_dict())

    def evaluate(self, data: Sequence[torch.Tensor]) -> dict:
        """Mean objective terms over `data` in batches (no parameter update)."""
        n, bs = data[0].shape[0], self.config.batch_size
        sums: dict[str, float] = {}
        self.module.eval()
        for i in range(0, n, bs):
            out = self.val_objective([t[i : i + bs] for t in data])
            w = min(bs, n - i)
            for k in ("loss", "loss_out", "loss_jac"):
                if k in out:
                    sums[k] = sums.get(k, 0.0) + _num(out[k]) * w
        return {k: v / n for k, v in sums.items()}

    def fit(self, train: Sequence[torch.Tensor], val: Sequence[torch.Tensor] | None = None) -> list[dict]:
        """Train; returns the per-epoch history and leaves the best (val) weights in the module."""
        cfg = self.config
        n = train[0].shape[0]
        if n == 0:
            raise ValueError("no training samples")
        gen = torch.Generator().manual_seed(cfg.seed)
        params = [p for p in self.module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if self.optimizer_state is not None:
            opt.load_state_dict(self.optimizer_state)
        steps_per_epoch = cfg.steps_per_epoch or math.ceil(n / min(cfg.batch_size, n))
        best_state, bad_epochs = None, 0
        for epoch in range(1, cfg.epochs + 1):
            self.module.train()
            t0, seen, sums = time.perf_counter(), 0, {"loss": 0.0, "loss_out": 0.0, "loss_jac": 0.0}
            n_steps = 0
            for idx in self._batches(n, gen, steps_per_epoch):
                if cfg.max_steps is not None and self.steps_done >= cfg.max_steps:
                    break
                if self.should_stop is not None and self.should_stop():
                    raise Cancelled(f"cancelled at epoch {epoch}, step {self.steps_done}")
                batch = [t[idx] for t in train]
                out = self.objective(batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {float(loss.detach())} at epoch {epoch}, step {self.steps_done + 1}; "
                        "lower the learning rate or lambda_jac"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                set_warmup_lr(opt, cfg.lr, self.steps_done, self.warmup_steps)
                opt.step()
                self.steps_done += 1
                n_steps += 1
                seen += len(idx)
                for k in sums:
                    sums[k] += _num(out.get(k, 0.0))
                info = {
                    "epoch": epoch,
                    "epochs": cfg.epochs,
                    "step": self.steps_done,
                    "loss": _num(loss),
                    "loss_out": _num(out.get("loss_out", loss)),
                    "loss_jac": _num(out.get("loss_jac", 0.0)),
                    "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                }
                _call(self.callbacks, "on_step_end", info)
            if n_steps == 0:
                break
            record = {
                "epoch": epoch,
                "epochs": cfg.epochs,
                "step": self.steps_done,
                **{k: v / n_steps for k, v in sums.items()},
                "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9),
            }
            if val is not None and val[0].shape[0] > 0:
                v = self.evaluate(val)
                record["val_loss"] = v["loss"]
                if self.best_val is None or v["loss"] < self.best_val:
                    self.best_val, best_state, bad_epochs = v["loss"], self._snapshot(), 0
                else:
                    bad_epochs += 1
            self.history.append(record)
            _call(self.callbacks, "on_epoch_end", record)
            if val is not None and bad_epochs >= cfg.patience:
                break
        if best_state is not None:
            self.module.load_state_dict(best_state)
        self.module.eval()
        return self.history
