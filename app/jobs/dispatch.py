"""Jobs leave for the broker only after their transaction commits.

A request (or a job) calls `enqueue_after_commit(session, task_name, job_id)`; the names wait in the
session and are handed to the app's dispatcher once the commit succeeds, and are dropped on rollback,
so nothing is queued for a rolled-back request. Jobs carry ids, never objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

_BUFFER_KEY = "graft_pending_jobs"
_DISPATCH_KEY = "graft_dispatch"

Dispatch = Callable[[str, str], None]
"""`dispatch(task_name, job_id)`: sends one job to Celery, or to the in-process runner."""

JOB_QUEUE = "transplant"
"""The Celery queue GPU workers consume (transplants and amalgamations alike)."""
TASK_PACKAGE = "workers.tasks"
"""Task `graft.<name>` is `workers.tasks.<name>.execute(job_id, ctx)`; Celery knows it by the name."""
_TASK_FOR_KIND = {"transplant": "graft.transplant", "amalgamation": "graft.amalgamate"}


def task_for_kind(kind: str) -> str:
    """The task name that runs jobs of `kind` (the reconciler re-sends jobs by their kind)."""
    return _TASK_FOR_KIND.get(kind, f"graft.{kind}")


def task_module(task_name: str) -> str:
    """The module holding `task_name`'s code, e.g. `graft.transplant` → `workers.tasks.transplant`."""
    prefix, _, short = task_name.partition(".")
    if prefix != "graft" or not short.isidentifier():
        raise ValueError(f"task names look like 'graft.<name>', not {task_name!r}")
    return f"{TASK_PACKAGE}.{short}"


def enqueue_after_commit(session: Session, task_name: str, job_id: str) -> None:
    """Queue `task_name(job_id)` to be sent once `session` commits."""
    session.info.setdefault(_BUFFER_KEY, []).append((task_name, job_id))


def set_dispatch(factory: sessionmaker[Session], dispatch: Dispatch | None) -> None:
    """Make every session from `factory` send its committed jobs through `dispatch`."""
    factory.kw.setdefault("info", {})[_DISPATCH_KEY] = dispatch


def attach_job_buffer(factory: sessionmaker[Session]) -> None:
    """Install the after-commit / after-rollback hooks on sessions made by `factory`."""

    @event.listens_for(factory, "after_commit")
    def _send(session: Session) -> None:
        pending = session.info.pop(_BUFFER_KEY, [])
        dispatch = session.info.get(_DISPATCH_KEY)
        for task_name, job_id in pending:
            if dispatch is None:
                log.warning("no job dispatcher configured; job %s stays queued", job_id)
                continue
            try:
                dispatch(task_name, job_id)
            except Exception:  # the row is committed: the reconciler re-sends it later
                log.exception("could not send job %s to the queue; it will be re-sent", job_id)

    @event.listens_for(factory, "after_soft_rollback")
    def _drop(session: Session, _previous_transaction: object) -> None:
        session.info.pop(_BUFFER_KEY, None)
