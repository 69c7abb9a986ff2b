"""A trainer that knows nothing of the method: it optimises a module on an objective over batches."""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from transplant.errors import Cancelled, TrainingDiverged

MIN_STEPS = 300
"""The smallest budget the defaults give: one pass over 16 inputs is one step, and 10 steps learn nothing."""
MAX_AUTO_STEPS = 3000
"""The largest budget the defaults give (a long job should be asked for)."""
AUTO_PASSES = 40
"""Passes over the training split the default budget aims at, between MIN_STEPS and MAX_AUTO_STEPS."""
ROUNDS = 20
"""Held-out evaluations per budget when the budget is given in steps (or by default)."""


@dataclass
class TrainConfig:
    """How an adapter is trained, independent of the method."""

    steps: int | None = None
    """Optimiser steps in all. None: `epochs` passes when set, else AUTO_PASSES passes over the training
    split, at least MIN_STEPS and at most MAX_AUTO_STEPS (see `budget`)."""
    epochs: int | None = None
    """The budget as passes over the training split (`steps` wins when both are set)."""
    steps_per_epoch: int | None = None
    """Steps per round: history, held-out evaluation and early stopping happen once a round. None: one pass
    when the budget is given in epochs, else a ROUNDS-th of the budget."""
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
    patience: int | None = None
    """Optimiser steps without a better held-out loss before training stops (checked once a round);
    None: half the budget (needs val_fraction > 0)."""
    lambda_jac: float = 1.0
    """Weight λ of the Jacobian-matching term (back_distillation)."""
    probes: int = 1
    """Random vector–Jacobian probes K per sample and step (back_distillation)."""
    probe_pool: int = 4
    """Probes per training sample that run_transplant draws once, with the teacher's vector–Jacobian
    products (g_T and the features are fixed, so the teacher is never run while training); each step
    uses `probes` of them per sample, and the held-out loss one fixed probe per sample."""
    normalise: str = "probe"
    """Scale of the Jacobian term: "probe" (÷‖J_Tᵀv‖² per probe), "batch" or "none"."""
    output_loss: str = "auto"
    """Output-matching loss of distillation / back_distillation: "mse" on outputs/logits, "kl" on
    temperature-scaled softmax over dim 1, or "auto" (run_transplant: "kl" for class logits (N, K),
    "mse" for anything else)."""
    temperature: float = 2.0
    """Softmax temperature of the "kl" output loss."""
    anchor: float = 1.0
    """With a reference category module: weight of the term that keeps h(f(x)) near the reference's
    features (mean squared error ÷ their variance), so the adapter stays close to what g_S natively takes
    and generalises beyond the training inputs (docs/real-networks.md); no effect without a reference."""
    probe_dist: str = "rademacher"
    """Distribution of the probes v: "rademacher" or "gaussian" (both have E[v vᵀ] = I)."""
    grad_clip: float | None = 10.0
    """Clip the adapter's gradient norm (None = no clipping)."""

    def loss_options(self) -> dict:
        """The keyword arguments of back_distillation_loss that this config sets."""
        return {"lambda_jac": self.lambda_jac, "probes": self.probes, "normalise": self.normalise,
                "output_loss": self.output_loss, "temperature": self.temperature,
                "probe_dist": self.probe_dist}

    def resolved_device(self) -> torch.device:
        """The device training will actually use."""
        want_cuda = self.device in ("cuda", "auto") or self.device.startswith("cuda:")
        if want_cuda and torch.cuda.is_available():
            return torch.device(self.device if self.device.startswith("cuda") else "cuda")
        return torch.device("cpu")

    def budget(self, n_train: int) -> tuple[int, int, int | None]:
        """(total steps, steps per round, patience in steps) for `n_train` training samples."""
        per_pass = math.ceil(n_train / min(self.batch_size, n_train))
        if self.steps is not None:
            total, rounds = self.steps, None
        elif self.epochs is not None:
            total, rounds = self.epochs * per_pass, per_pass
        else:
            total, rounds = min(max(AUTO_PASSES * per_pass, MIN_STEPS), MAX_AUTO_STEPS), None
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        total = max(1, total)
        round_len = self.steps_per_epoch or rounds or max(1, math.ceil(total / ROUNDS))
        patience = self.patience if self.patience is not None else max(round_len, total // 2)
        return total, round_len, patience


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
        """Train for the budget; returns the per-round history and leaves the best (val) weights in h.

        Early stopping: the held-out loss is evaluated once a round, on the same samples and probes each
        time, and training stops when it has not improved for `patience` steps.
        """
        cfg = self.config
        n = train[0].shape[0]
        if n == 0:
            raise ValueError("no training samples")
        total, round_len, patience = cfg.budget(n)
        rounds = math.ceil(total / round_len)
        gen = torch.Generator().manual_seed(cfg.seed)
        params = [p for p in self.module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if self.optimizer_state is not None:
            opt.load_state_dict(self.optimizer_state)
        batches = iter(self._batches(n, gen, total))
        best_state, best_step = None, 0
        for epoch in range(1, rounds + 1):
            self.module.train()
            t0, seen, sums = time.perf_counter(), 0, {"loss": 0.0, "loss_out": 0.0, "loss_jac": 0.0}
            n_steps = 0
            for idx in itertools.islice(batches, min(round_len, total - self.steps_done)):
                if self.should_stop is not None and self.should_stop():
                    raise Cancelled(f"cancelled at round {epoch}, step {self.steps_done}")
                batch = [t[idx] for t in train]
                out = self.objective(batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {float(loss.detach())} at step {self.steps_done + 1}; "
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
                    "epochs": rounds,
                    "step": self.steps_done,
                    "steps": total,
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
                "epochs": rounds,
                "step": self.steps_done,
                "steps": total,
                **{k: v / n_steps for k, v in sums.items()},
                "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9),
            }
            if val is not None and val[0].shape[0] > 0:
                v = self.evaluate(val)
                record["val_loss"] = v["loss"]
                if self.best_val is None or v["loss"] < self.best_val:
                    self.best_val, best_state, best_step = v["loss"], self._snapshot(), self.steps_done
            self.history.append(record)
            _call(self.callbacks, "on_epoch_end", record)
            if val is not None and patience is not None and self.steps_done - best_step >= patience:
                break
            if self.steps_done >= total:
                break
        if best_state is not None:
            self.module.load_state_dict(best_state)
        self.module.eval()
        return self.history
