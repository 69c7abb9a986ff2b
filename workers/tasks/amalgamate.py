"""Task `graft.amalgamate`: load the job → fetch every teacher (f + head) and the data → amalgamate →
register the student as a category module version and a task module version.

Thin and idempotent like `graft.transplant`: the job row decides whether anything runs (see
`workers.lifecycle`), and both versions are registered with `job_id` and `job_role` ("category",
"task"), so running the task twice for one job never makes duplicates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from celery import shared_task
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.datasets.service import get_dataset, load_arrays
from app.jobs.context import JobContext
from app.modules.service import resolve_version, version_ref
from transplant.amalgamate import AmalgamationConfig, StudentConfig, Teacher, amalgamate
from transplant.artifacts import save_module
from workers import lifecycle
from workers.lifecycle import JobFailed, JobRun, Register
from workers.registration import register_artifact, result_module
from workers.tasks.transplant import fetch_module


class _Progress:
    """Engine epoch records → job progress: one overall epoch count, the engine's stage as `phase`."""

    def __init__(self, run: JobRun, total: int) -> None:
        self.run, self.total, self.done = run, total, 0

    def __call__(self, record: dict) -> None:
        self.done += 1
        self.run.on_epoch_end({
            "phase": record["stage"], "layer": record["layer"], "phase_epoch": record["epoch"],
            "phase_epochs": record["epochs"], "epoch": self.done, "epochs": max(self.total, self.done),
            "loss": record["loss"],
        })


def _configs(req: dict, input_shape: list, device: str) -> tuple[StudentConfig, AmalgamationConfig]:
    s = req["student"]
    student = StudentConfig(
        input_shape=tuple(input_shape), widths=tuple(s["widths"]),
        kernel_sizes=tuple(s["kernel_sizes"]) if s.get("kernel_sizes") else None,
        pools=tuple(s["pools"]) if s.get("pools") else None, head_hidden=tuple(s.get("head_hidden") or ()),
    )
    epochs = int(req["epochs"])
    knobs = {"epochs_per_layer": epochs, "head_epochs": epochs, "finetune_epochs": epochs, **req["train"]}
    return student, AmalgamationConfig(seed=int(req["seed"]), device=device, **knobs)


def _work(run: JobRun) -> Register:
    """Fetch, load, amalgamate, export; returns the registration step."""
    ctx, req = run.ctx, run.request
    run.report(stage="loading", epoch=0, epochs=0, attempt=run.attempts)
    with ctx.sessionmaker() as session:
        pieces = [
            (resolve_version(session, t["category_module"]), resolve_version(session, t["task_module"]))
            for t in req["teachers"]
        ]
        dataset = get_dataset(session, req["dataset"])
    with tempfile.TemporaryDirectory(prefix="graft-job-") as tmp:
        teachers = [
            Teacher(fetch_module(ctx, f, Path(tmp)), fetch_module(ctx, head, Path(tmp)), list(t["classes"]))
            for (f, head), t in zip(pieces, req["teachers"], strict=True)
        ]
    try:
        x_np, _ = load_arrays(ctx.store, dataset)
    except (OSError, ValueError) as exc:
        raise JobFailed(f"Dataset {dataset.id} could not be read from the artifact store ({exc}).") from None
    x = torch.from_numpy(x_np).float()  # (N, C, H, W)
    input_shape = list(x.shape[1:])
    student, config = _configs(req, input_shape, "cuda" if torch.cuda.is_available() else "cpu")
    # Registry teachers are black boxes (f and head only): one layer-wise group, then head, then fine-tune.
    total = config.epochs_per_layer + config.head_epochs + config.finetune_epochs
    run.report(stage="training", device=config.device, epochs=total)
    result = amalgamate(
        teachers, x, student=student, config=config, callbacks=[_Progress(run, total)],
        should_stop=run.should_stop,
    )
    run.report(stage="registering")
    example = torch.zeros(2, *input_shape)
    with torch.no_grad():
        features = result.category_module(example)  # (2, widths[-1])
    exported = {
        "category": (save_module(result.category_module, example, "torch_export"), [None, *input_shape]),
        "task": (save_module(result.task_module, features, "torch_export"), [None, *features.shape[1:]]),
    }
    metrics = {
        **{k: v for k, v in result.metrics.items() if k != "classes"},
        "classes": result.classes,
        "teachers": req["teachers"],
        "dataset": dataset.id,
        "job_id": run.job_id,
    }
    parents = [{**version_ref(v), "role": "teacher"} for pair in pieces for v in pair]
    category = req["category"]

    def register(session: Session) -> dict:
        modules = {
            role: result_module(
                session, req[f"{role}_module"], role, owner_token_id=run.owner_token_id,
                description=f"Amalgamated student ({role} module).",
                what=f"the student's {role} module", **{role: req[role]},
            )
            for role in ("category", "task")
        }
        refs = {}
        for role, (data, in_shape) in exported.items():
            version = register_artifact(
                run, session, module=modules[role], data=data, filename=f"{role}.pt2", job_role=role,
                parents=parents, meta={
                    "format": "torch_export",
                    "input_shape": in_shape,
                    "trained_on": [category],
                    "metrics": metrics,
                    "description": (
                        f"Amalgamated student ({role} module) of {len(pieces)} teachers over "
                        f"{len(result.classes)} classes, job {run.job_id}, dataset {dataset.id}"
                    ),
                },
            )
            refs[f"{role}_module"] = version_ref(version)
        return {**refs, "metrics": {k: v for k, v in metrics.items() if k != "teachers"}}

    return register


def execute(job_id: str, ctx: JobContext, *, redelivered: bool = False) -> str | None:
    """Run one delivery of amalgamation job `job_id`; its final status (None when not run here)."""
    return lifecycle.execute(job_id, ctx, _work, redelivered=redelivered)


@shared_task(name="graft.amalgamate", bind=True, autoretry_for=(OperationalError,), retry_backoff=5,
             max_retries=5)
def amalgamate_task(self, job_id: str) -> str | None:  # noqa: ANN001
    """Celery entry point: `execute` with this worker process's own backends."""
    return lifecycle.deliver_from_celery(self.request, job_id, _work)
