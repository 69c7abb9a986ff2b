"""One delivery of a job, from claim to final status; shared by every task (transplant, amalgamate).

The job row is the truth: a delivery claims it (`queued` → `running`, one more attempt), streams
progress into it, and ends it with exactly one final status. A job already final is left alone, a
cancelled one never starts, a redelivery after a lost worker starts over (bounded by
`job_max_attempts`), and every failure ends as `failed` with a readable error, never stuck `running`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy.orm import Session

from app.errors import GraftError
from app.jobs import repository
from app.jobs.context import JobContext
from app.logging import job_context
from app.models import Job
from app.models.job import FINAL_STATUSES
from transplant.errors import Cancelled, TrainingDiverged

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.5
"""Progress is written (and the cancel flag read) at most this often: ~2 commits a second."""


class JobFailed(Exception):
    """A failure with a message meant for the user (a module that does not load, bad data…)."""


Register = Callable[[Session], dict]
"""Called in the final transaction: registers the job's outputs and returns the job's `result`."""
Work = Callable[["JobRun"], Register]


class JobRun:
    """A running delivery: engine callbacks (`on_step_end`, `on_epoch_end`) and `should_stop`."""

    def __init__(self, job: Job, ctx: JobContext) -> None:
        self.job_id = job.id
        self.owner_token_id = job.owner_token_id  # modules the job creates belong to this token
        self.started = time.monotonic()
        self.timed_out = False
        self.request: dict = dict(job.request)
        self.attempts = job.attempts
        self.ctx = ctx
        self.progress: dict = {}
        self.history: list[dict] = []
        self.cancel_requested = False
        self._dirty = False
        self._history_saved = 0
        self._last_flush = 0.0
        self.on_rollback: list[Callable[[Session], None]] = []
        """Clean-ups when the final transaction fails (e.g. delete an object no row references)."""

    def report(self, **fields: Any) -> None:
        """Merge fields into the progress (e.g. `stage="loading"`) and write them now."""
        self.progress.update(fields)
        self._dirty = True
        self.flush(force=True)

    def on_step_end(self, info: dict) -> None:
        self.progress.update(info, stage="training")
        self._dirty = True
        self.flush()

    def on_epoch_end(self, record: dict) -> None:
        self.history.append(record)
        self.progress.update({k: v for k, v in record.items() if k != "step"}, stage="training")
        self._dirty = True
        self.flush()

    def should_stop(self) -> bool:
        """Stop when the job is cancelled, ran past its time limit, or the process shuts down.

        Checked at every step. A step is bounded, since an uploaded graph is straight-line code (its
        operators exclude loops, transplant/allowlist.py), so a job over its limit really stops.
        """
        self.flush()
        limit = self.ctx.settings.job_time_limit_s
        if limit and time.monotonic() - self.started > limit:
            self.timed_out = True
        return self.cancel_requested or self.timed_out or self.ctx.stopping.is_set()

    def time_limit_message(self) -> str:
        return (f"The job ran past its time limit of {self.ctx.settings.job_time_limit_s:g} s "
                "(GRAFT_JOB_TIME_LIMIT_S) and was stopped; ask for fewer steps or a smaller batch.")

    def flush(self, force: bool = False) -> None:
        """Write progress and read the cancel flag, at most every FLUSH_INTERVAL_S unless forced."""
        now = time.monotonic()
        if not force and now - self._last_flush < FLUSH_INTERVAL_S:
            return
        self._last_flush = now
        with self.ctx.sessionmaker() as session:
            if self._dirty:
                # The whole history is rewritten only when an epoch was added since the last write.
                history = self.history if len(self.history) != self._history_saved else None
                cancel = repository.save_progress(session, self.job_id, self.progress, history)
                self._history_saved = len(self.history)
            else:
                job = repository.get(session, self.job_id)
                cancel = job is None or job.cancel_requested
            session.commit()
        self._dirty = False
        self.cancel_requested = cancel


def _claim(job_id: str, ctx: JobContext, redelivered: bool) -> Job | None:
    """Take the job for this delivery; None when there is nothing to run."""
    with ctx.sessionmaker() as session:
        job = repository.get(session, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping its message", job_id)
            return None
        if job.status in FINAL_STATUSES:
            log.info("job %s is already %s; nothing to do", job_id, job.status)
            return None
        if job.cancel_requested:
            repository.finish(session, job_id, "cancelled")
            session.commit()
            return None
        if not repository.claim_running(session, job_id, ctx.worker, redelivered=redelivered):
            log.info("job %s is held by another delivery (%s); skipping a duplicate", job_id, job.worker)
            return None
        session.commit()
        job = repository.get(session, job_id)
        assert job is not None
        if job.attempts > ctx.settings.job_max_attempts:
            lost = job.attempts - 1
            repository.finish(
                session, job_id, "failed",
                error=f"The worker running this job was lost {lost} times (killed, out of memory or "
                "restarted); giving up. Retry with a smaller batch_size or on a bigger machine.",
            )
            session.commit()
            return None
        return job


def _error_message(exc: BaseException) -> str:
    """A readable one-line reason for a failed job."""
    if isinstance(exc, JobFailed):
        return str(exc)
    if isinstance(exc, GraftError):  # a service refused something (a module deleted meanwhile, …)
        return exc.detail
    if isinstance(exc, TrainingDiverged):
        return f"Training diverged: {exc}."
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        where = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "CPU"
        return (
            f"Out of memory on the {where} ({str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
            "retry with a smaller train.batch_size or adapter."
        )
    return f"The job failed with {type(exc).__name__}: {exc}"


def _end(ctx: JobContext, job_id: str, status: str, **values: Any) -> None:
    with ctx.sessionmaker() as session:
        repository.finish(session, job_id, status, **values)
        session.commit()


def run_job(job_id: str, ctx: JobContext, work: Work, *, redelivered: bool = False) -> str | None:
    """Run one delivery of `job_id` with `work`; the job's final status (None: not run here)."""
    job = _claim(job_id, ctx, redelivered)
    if job is None:
        return None
    run = JobRun(job, ctx)
    try:
        register = work(run)
        run.flush(force=True)
        if run.timed_out:
            raise JobFailed(run.time_limit_message())
        if run.cancel_requested or ctx.stopping.is_set():
            raise Cancelled("cancelled before the results were registered")
        with ctx.sessionmaker() as session:
            locked = repository.get(session, job_id, for_update=True)
            if locked is None or locked.status != "running":
                return locked.status if locked else None  # another delivery ended it meanwhile
            if locked.cancel_requested:
                session.rollback()
                raise Cancelled("cancelled before the results were registered")
            try:
                result = register(session)
                run.progress["stage"] = "done"
                repository.finish(session, job_id, "succeeded", result=result, progress=run.progress,
                                  history=run.history)
                session.commit()
            except BaseException:
                session.rollback()
                for clean in run.on_rollback:
                    clean(session)
                raise
        return "succeeded"
    except Cancelled:
        if run.timed_out and not run.cancel_requested:
            _end(ctx, job_id, "failed", error=run.time_limit_message(),
                 progress={**run.progress, "stage": "failed"}, history=run.history)
            return "failed"
        if ctx.stopping.is_set() and not run.cancel_requested:
            with ctx.sessionmaker() as session:  # shutting down: run it again at the next start
                repository.release(session, job_id)
                session.commit()
            return "queued"
        _end(ctx, job_id, "cancelled", progress={**run.progress, "stage": "cancelled"}, history=run.history)
        return "cancelled"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _end(ctx, job_id, "failed", error=_error_message(exc)[:4000],
             progress={**run.progress, "stage": "failed"}, history=run.history)
        return "failed"


def execute(job_id: str, ctx: JobContext, work: Work, *, redelivered: bool = False) -> str | None:
    """Run one delivery of job `job_id` through `work`, with the job id in every log line."""
    with job_context(job_id):
        return run_job(job_id, ctx, work, redelivered=redelivered)


def deliver_from_celery(request: Any, job_id: str, work: Work) -> str | None:
    """Celery entry point shared by every task: `execute` with this worker process's own backends."""
    from workers.context import get_context

    # A redelivered message (its worker was lost) or a retry may take over a job left `running`.
    redelivered = bool((request.delivery_info or {}).get("redelivered")) or request.retries > 0
    ctx = get_context()
    if request.hostname:  # the Celery node name (e.g. gpu1@host) says more than host:pid
        ctx = dataclasses.replace(ctx, worker=f"{request.hostname}:{os.getpid()}")
    return execute(job_id, ctx, work, redelivered=redelivered)
