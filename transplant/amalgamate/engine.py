"""`amalgamate`: one compact student from several teacher classifiers, without labels."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from transplant.amalgamate.config import AmalgamationConfig, AmalgamationResult, StudentConfig, Teacher
from transplant.amalgamate.student import StudentFeatures, block_shapes, build_head, count_params
from transplant.amalgamate.targets import (
    compact_target,
    merged_logits,
    run_teacher,
    stage_for_block,
    union_classes,
)
from transplant.blackbox import frozen
from transplant.errors import Cancelled

Callback = Callable[[dict], None]


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean()


class _Loop:
    """Seeded mini-batch Adam loops that report each epoch and honour `should_stop`."""

    def __init__(self, cfg: AmalgamationConfig, callbacks: Sequence[Callback], should_stop, n: int) -> None:
        self.cfg, self.callbacks, self.should_stop, self.n = cfg, callbacks, should_stop, n
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.history: list[dict] = []

    def run(self, params, loss_of: Callable[[torch.Tensor], torch.Tensor], *, stage: str,
            layer: int | None, epochs: int, lr: float) -> float:
        """Minimise loss_of(batch indices) over `epochs`; returns the last epoch's mean loss."""
        opt = torch.optim.Adam(list(params), lr=lr)
        mean = float("nan")
        for epoch in range(epochs):
            total, seen = 0.0, 0
            for idx in torch.randperm(self.n, generator=self.gen).split(self.cfg.batch_size):
                if self.should_stop is not None and self.should_stop():
                    raise Cancelled(f"amalgamation stopped during {stage}, epoch {epoch}")
                loss = loss_of(idx)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss in stage {stage}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
            mean = total / seen
            record = {"stage": stage, "layer": layer, "epoch": epoch + 1, "epochs": epochs, "loss": mean}
            self.history.append(record)
            for cb in self.callbacks:
                cb(dict(record))
        return mean


def _teacher_modules(teachers: Sequence[Teacher]) -> list:
    """Every distinct module to freeze; a stage that is a submodule of its teacher's f is frozen with f.

    (Freezing a module twice would make `frozen` restore the inner one's flags from the frozen state.)
    """
    mods: list = []
    for t in teachers:
        inner = list(t.feature.modules()) if isinstance(t.feature, nn.Module) else []
        for m in (t.feature, t.head, *(t.layers or ())):
            nested = m is not t.feature and any(m is i for i in inner)
            if not nested and not any(m is seen for seen in mods):
                mods.append(m)
    return mods


def _teacher_targets(teachers: Sequence[Teacher], x: torch.Tensor, cfg: AmalgamationConfig, device):
    """Each teacher's intermediates, and the merged logits (N, U) over the union `classes`."""
    stages, logits = [], []
    with frozen(*_teacher_modules(teachers), device=device):
        for t in teachers:
            s, z = run_teacher(t, x, cfg.teacher_batch_size, device)
            stages.append(s)
            logits.append(z)
    classes = union_classes(teachers)
    return stages, merged_logits(logits, teachers, classes), classes


def _check(teachers: Sequence[Teacher], x: torch.Tensor, student: StudentConfig) -> None:
    if not teachers:
        raise ValueError("amalgamation needs at least one teacher")
    if tuple(x.shape[1:]) != tuple(student.input_shape):
        raise ValueError(f"inputs have shape {tuple(x.shape[1:])}, the student expects {student.input_shape}")


def _finish(feats: StudentFeatures, head: nn.Module, teachers, classes, targets, x, metrics, history, t0):
    """Fold the FAMs, measure, and hand back CPU modules in eval mode."""
    feats.fold()
    feats, head = feats.cpu().eval(), head.cpu().eval()
    with torch.no_grad():
        logits = torch.cat([head(feats(xb)) for xb in x.split(256)])  # (N, U)
    metrics.update(
        student_params=count_params(feats, head),
        teachers_params=count_params(*(m for t in teachers for m in (t.feature, t.head))),
        teacher_agreement=float((logits.argmax(1) == targets.cpu().argmax(1)).float().mean()),
        logit_mse=float(((logits - targets.cpu()) ** 2).mean()),
        n_inputs=int(x.shape[0]),
        wall_s=time.perf_counter() - t0,
    )
    return AmalgamationResult(feats, head, classes, metrics, history)


def amalgamate(
    teachers: list[Teacher],
    x: torch.Tensor,
    *,
    student: StudentConfig,
    config: AmalgamationConfig | None = None,
    callbacks: Sequence[Callback] = (),
    should_stop: Callable[[], bool] | None = None,
) -> AmalgamationResult:
    """Train one student over the union of the teachers' classes from unlabelled x (N, C, H, W)."""
    cfg, t0 = config or AmalgamationConfig(), time.perf_counter()
    _check(teachers, x, student)
    device = torch.device(cfg.device)
    x = x.float()
    stages, targets, classes = _teacher_targets(teachers, x, cfg, device)
    shapes, n_blocks = block_shapes(student), len(student.widths)

    # Step 1: per block, the compact target = the auto-encoder code of the concatenated teacher features.
    per_block: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]
    for s in stages:
        for block, j in enumerate(stage_for_block(len(s), n_blocks)):
            if j is not None:
                per_block[block].append(s[j])
    codes: dict[int, tuple[torch.Tensor, bool]] = {}
    metrics: dict = {"classes": len(classes), "ae_explained": {}, "layer_loss": {}}
    for block, feats_b in enumerate(per_block):
        if feats_b:
            code, ae, spatial = compact_target(feats_b, shapes[block])
            codes[block] = (code / code.var(0).sum().div(code.shape[1]).sqrt().clamp_min(1e-8), spatial)
            metrics["ae_explained"][block] = ae.explained
    del stages, per_block

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        feats = StudentFeatures(student, cfg.fam_init).to(device)
        head = build_head(student, len(classes)).to(device)
    loop = _Loop(cfg, callbacks, should_stop, x.shape[0])

    # Step 2: blocks learn the codes group by group (a group ends at a block with a target); then the head.
    h = x.to(device)  # (N, C, H, W): the trained student's output so far, cached
    start = 0
    for block in sorted(codes):
        group = feats.blocks[start : block + 1]
        code, spatial = codes[block]
        # A vector target is compared with what the head will see (the pooled ReLU output) through a linear
        # probe that is then discarded: the head is linear, so a change of basis there costs nothing.
        probe = None if spatial else nn.Linear(group[-1].conv.out_channels, code.shape[1]).to(device)
        params = [*group.parameters(), *(probe.parameters() if probe is not None else ())]

        def layer_loss(idx, group=group, code=code, probe=probe, h=h):
            z = h[idx]
            for b in group[:-1]:
                z = b(z)
            if probe is not None:
                return _mse(probe(group[-1](z).mean((2, 3))), code[idx])  # (B, k)
            z = group[-1].pre_activation(z)  # (B, C_l, h, w): the FAM output, pooled
            return _mse(z[:, : code.shape[1]], code[idx])

        metrics["layer_loss"][block] = loop.run(params, layer_loss, stage="layer", layer=block,
                                                epochs=cfg.epochs_per_layer, lr=cfg.lr)
        with torch.no_grad():
            h = torch.cat([group_forward(group, hb) for hb in h.split(cfg.teacher_batch_size)])
        start = block + 1
    pooled = h.mean((2, 3))  # (N, C_L) = the category module's output
    metrics["head_loss"] = loop.run(head.parameters(), lambda idx: _mse(head(pooled[idx]), targets[idx]),
                                    stage="head", layer=n_blocks, epochs=cfg.head_epochs, lr=cfg.lr)

    # Step 3: a short joint fine-tune of everything on the merged logits.
    xd = x.to(device)
    params = [*feats.parameters(), *head.parameters()]
    metrics["finetune_loss"] = loop.run(params, lambda idx: _mse(head(feats(xd[idx])), targets[idx]),
                                        stage="finetune", layer=None, epochs=cfg.finetune_epochs,
                                        lr=cfg.finetune_lr)
    return _finish(feats, head, teachers, classes, targets, x, metrics, loop.history, t0)


def group_forward(group: Sequence[nn.Module], z: torch.Tensor) -> torch.Tensor:
    """Run z through consecutive student blocks."""
    for b in group:
        z = b(z)
    return z


def distill_logits_baseline(
    teachers: list[Teacher],
    x: torch.Tensor,
    *,
    student: StudentConfig,
    config: AmalgamationConfig | None = None,
    epochs: int | None = None,
    callbacks: Sequence[Callback] = (),
    should_stop: Callable[[], bool] | None = None,
) -> AmalgamationResult:
    """Plain multi-teacher logit distillation: the same student regresses the merged logits end to end.

    `epochs` defaults to the passes over the data that `amalgamate` makes in all its stages together.
    """
    cfg, t0 = config or AmalgamationConfig(), time.perf_counter()
    _check(teachers, x, student)
    device = torch.device(cfg.device)
    x = x.float()
    _, targets, classes = _teacher_targets(teachers, x, cfg, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        feats = StudentFeatures(student, "default").to(device)
        feats.fold()  # a plain conv stack: the baseline has no FAM
        head = build_head(student, len(classes)).to(device)
    n_epochs = epochs if epochs is not None else (
        cfg.epochs_per_layer * len(student.widths) + cfg.head_epochs + cfg.finetune_epochs)
    loop = _Loop(cfg, callbacks, should_stop, x.shape[0])
    xd = x.to(device)
    loss = loop.run([*feats.parameters(), *head.parameters()],
                    lambda idx: _mse(head(feats(xd[idx])), targets[idx]),
                    stage="baseline", layer=None, epochs=n_epochs, lr=cfg.lr)
    return _finish(feats, head, teachers, classes, targets, x, {"classes": len(classes), "loss": loss},
                   loop.history, t0)
