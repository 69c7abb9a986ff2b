"""The job machinery beside the HTTP routes: a dispatcher (Celery or in-process) and a reconciler.

- With `GRAFT_BROKER_URL` set, committed jobs are sent to Celery by task NAME (`send_task`): the API
  never imports the task code, and GPU workers (`graft worker`) run them.
- Without it (embedded mode), a small thread pool runs the same task function in this process,
  imported by name with importlib, so `graft serve` alone can transplant and no request blocks on it.
- The reconciler re-sends committed jobs that no queue accepted yet (`enqueued_at` is NULL: the
  broker was down at commit time, or the process died right after committing), at start and then
  periodically. Embedded mode also takes back the jobs its previous run held in memory.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.errors import BackendUnavailable
from app.jobs import repository
from app.jobs.context import JobContext
from app.jobs.dispatch import JOB_QUEUE, Dispatch, set_dispatch, task_for_kind, task_module

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S = 30.0
# A job younger than this may still be on its way through its own after-commit dispatch.
RECONCILE_GRACE_S = 10.0

TaskFunction = Callable[[str, JobContext], None]


def task_function(task_name: str) -> TaskFunction:
    """`execute(job_id, ctx)` of the task called `task_name`, imported by name."""
    return importlib.import_module(task_module(task_name)).execute


class InProcessRunner:
    """Runs jobs on background threads of this process (embedded mode), one at a time by default."""

    def __init__(self, ctx: JobContext, max_workers: int = 1) -> None:
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="graft-job")

    def submit(self, task_name: str, job_id: str) -> None:
        fn = task_function(task_name)
        self.pool.submit(self._run, fn, job_id)

    def _run(self, fn: TaskFunction, job_id: str) -> None:
        try:
            fn(job_id, self.ctx)
        except Exception:  # the task records its own failures; this is a last resort for the log
            log.exception("job %s crashed in the in-process runner", job_id)

    def stop(self) -> None:
        """Stop: the running job goes back to the queue (see the task), queued ones wait for restart."""
        self.ctx.stopping.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


def celery_client(settings: Settings):  # noqa: ANN201 (celery is imported lazily)
    """A Celery app used only to send tasks by name; it never imports or runs them."""
    from celery import Celery

    client = Celery("graft-api", broker=settings.broker_url, set_as_current=False)
    client.conf.update(
        task_default_queue=JOB_QUEUE,
        broker_connection_retry_on_startup=False,
        # A request must not hang on a dead broker: fail fast, the reconciler re-sends later.
        broker_transport_options={
            "visibility_timeout": settings.job_visibility_timeout_s,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        },
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    )
    return client


def ping_queue(settings: Settings) -> None:
    """Raise `BackendUnavailable` if a Redis broker is configured and does not answer (embedded: no-op)."""
    url = settings.broker_url
    if not url or not url.startswith(("redis://", "rediss://")):
        return
    import redis

    try:
        _redis_client(url).ping()
    except redis.RedisError:
        raise BackendUnavailable(
            "The job queue (Redis) is unreachable right now, so nothing was queued; retry in a moment."
        ) from None


@functools.lru_cache(maxsize=4)
def _redis_client(url: str):  # noqa: ANN202 (redis is imported lazily)
    """One client per broker URL: its pool keeps the connection between submits and reconnects itself."""
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def marking_sent(factory: sessionmaker[Session], send: Dispatch) -> Dispatch:
    """Send, then record `enqueued_at`; a job whose send failed stays unmarked for the reconciler."""

    def dispatch(task_name: str, job_id: str) -> None:
        send(task_name, job_id)
        with factory() as session:
            repository.mark_sent(session, job_id)
            session.commit()

    return dispatch


def reconcile_once(factory: sessionmaker[Session], dispatch: Dispatch, *, grace_s: float) -> int:
    """Send every committed queued job older than `grace_s` that no queue accepted; how many were sent."""
    with factory() as session:
        pending = repository.unsent_jobs(session, created_before=utcnow() - timedelta(seconds=grace_s))
    sent = 0
    for kind, job_id in pending:
        try:
            dispatch(task_for_kind(kind), job_id)
            sent += 1
        except Exception as exc:  # broker still down: the next round tries again
            log.warning("could not re-send job %s (%s); will retry", job_id, exc)
            break
    if sent:
        log.info("re-sent %d job(s) that were committed but never queued", sent)
    return sent


class Reconciler:
    """A daemon thread calling `reconcile_once` every `interval_s` until stopped."""

    def __init__(self, factory: sessionmaker[Session], dispatch: Dispatch, interval_s: float) -> None:
        self.factory, self.dispatch, self.interval_s = factory, dispatch, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="graft-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                reconcile_once(self.factory, self.dispatch, grace_s=RECONCILE_GRACE_S)
            except Exception:  # the database may be down for a while; keep trying
                log.exception("job reconciler round failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def start(app: FastAPI) -> None:
    """Install the dispatcher on the app's sessions, take back orphaned jobs, start the reconciler."""
    settings: Settings = app.state.settings
    factory: sessionmaker[Session] = app.state.sessionmaker
    runner: InProcessRunner | None = None
    if settings.embedded_jobs:
        ctx = JobContext(
            settings=settings, sessionmaker=factory, store=app.state.store,
            worker=f"embedded:{socket.gethostname()}:{os.getpid()}",
        )
        runner = InProcessRunner(ctx)
        send: Dispatch = runner.submit
        # One embedded process owns its jobs: what its previous run held in memory is lost; redo it.
        with factory() as session:
            if repository.requeue_orphans(session):
                log.info("embedded mode: took back jobs left queued or running by the previous run")
            session.commit()
        grace_s = 0.0
    else:
        client = celery_client(settings)

        def send(task_name: str, job_id: str) -> None:
            # The Celery task id is the job id: worker logs and `celery inspect` name the job.
            client.send_task(task_name, args=[job_id], task_id=job_id, queue=JOB_QUEUE)

        grace_s = RECONCILE_GRACE_S
    dispatch = marking_sent(factory, send)
    set_dispatch(factory, dispatch)
    app.state.job_runner = runner
    app.state.job_dispatch = dispatch
    try:
        reconcile_once(factory, dispatch, grace_s=grace_s)
    except Exception:  # a database outage at start must not keep the API down
        log.exception("initial job reconciliation failed; the reconciler will retry")
    reconciler = Reconciler(factory, dispatch, RECONCILE_INTERVAL_S)
    reconciler.start()
    app.state.job_reconciler = reconciler


def stop(app: FastAPI) -> None:
    """Stop the reconciler and the in-process runner."""
    reconciler: Reconciler | None = getattr(app.state, "job_reconciler", None)
    if reconciler is not None:
        reconciler.stop()
    runner: InProcessRunner | None = getattr(app.state, "job_runner", None)
    if runner is not None:
        runner.stop()
    set_dispatch(app.state.sessionmaker, None)
