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

import pkgutil

from celery import Celery
from celery.signals import setup_logging

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
