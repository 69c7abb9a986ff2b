"""The Celery application of Graft's GPU workers (`graft worker`, or `celery -A workers.celery_app worker`).

Reliability settings for long GPU jobs:
- `task_acks_late` + `task_reject_on_worker_lost`: a job is acknowledged only when its task returns,
  so a worker killed mid-job (SIGKILL, OOM killer, lost machine) leaves the message unacknowledged
  and Redis hands it to another worker once the visibility timeout has passed. The task counts
  deliveries in the job row and gives up after `GRAFT_JOB_MAX_ATTEMPTS`.
- `visibility_timeout` = `GRAFT_JOB_VISIBILITY_TIMEOUT_S`: must exceed the longest job, or a job that
  is still running would be handed to a second worker.
- `worker_prefetch_multiplier=1`: a busy worker holds no queued jobs that an idle one could run.
- Pool: `threads` by default (one job at a time per GPU). No process is forked after CUDA is
  initialised, which CUDA does not survive; `solo` is as safe. Prefork is refused by `graft worker`
  (its children are forked from a parent that has imported torch).
Job state lives in the database (the `jobs` row); Celery's result backend is not used.
"""

from __future__ import annotations

import logging
import pkgutil

from celery import Celery
from celery.signals import setup_logging, worker_init

import workers.tasks
from app.config import Settings
from app.jobs.dispatch import JOB_QUEUE
from app.logging import configure_logging

settings = Settings()

# Every module in workers/tasks is a task module (transplant, amalgamate, …).
TASK_MODULES = [f"workers.tasks.{m.name}" for m in pkgutil.iter_modules(workers.tasks.__path__)]

app = Celery("graft", broker=settings.broker_url, include=TASK_MODULES)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=JOB_QUEUE,
    task_routes={"graft.*": {"queue": JOB_QUEUE}},
    task_serializer="json",
    accept_content=["json"],
    worker_pool="threads",
    worker_concurrency=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": settings.job_visibility_timeout_s,
        # How often a worker looks for messages of lost workers whose visibility timeout has passed.
        "unacked_restore_interval": max(1, min(60, settings.job_visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
    },
)
celery = app


@setup_logging.connect
def _logging(loglevel: int | str | None = None, **_kwargs: object) -> None:
    """Graft's log format (plain or JSON, with job ids) instead of Celery's own."""
    configure_logging(json=settings.log_json, level=loglevel or "INFO")


@worker_init.connect
def _warm_up(**_kwargs: object) -> None:
    """Pay torch.export's lazy imports (2-5 s on the first load of a process) before the first job."""
    import tempfile
    from pathlib import Path

    import torch

    from transplant.artifacts import load_module, save_module

    # Before "ready": the first job then costs what every job costs, not seconds more.
    try:
        with tempfile.TemporaryDirectory(prefix="graft-warm-") as tmp:
            path = Path(tmp) / "warm.pt2"
            path.write_bytes(save_module(torch.nn.Linear(2, 2), torch.zeros(2, 2), "torch_export"))
            with torch.no_grad():
                load_module(path, "torch_export")(torch.zeros(1, 2))
    except Exception:  # a failed warm-up costs the first job its speed, nothing else
        logging.getLogger(__name__).warning("torch.export warm-up failed", exc_info=True)
