"""Queries on jobs. State changes are conditional UPDATEs, so concurrent actors cannot both win."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.models import Job
from app.models.job import FINAL_STATUSES


def create(session: Session, *, job_id: str, kind: str, request: dict, owner_token_id: int | None) -> Job:
    job = Job(
        id=job_id, kind=kind, status="queued", request=request, progress={}, history=[],
        owner_token_id=owner_token_id,
    )
    session.add(job)
    session.flush()
    return job


def get(session: Session, job_id: str, *, for_update: bool = False) -> Job | None:
    stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).one_or_none()


def list_page(
    session: Session,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    status: str | None = None,
    kind: str | None = None,
) -> list[Job]:
    """Newest first; `after` is the (created_at, id) of the previous page's last job."""
    stmt = select(Job)
    if status:
        stmt = stmt.where(Job.status == status)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if after is not None:
        created, job_id = after
        stmt = stmt.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    return list(session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))


def mark_sent(session: Session, job_id: str) -> None:
    """Record that a broker (or the in-process runner) accepted the job."""
    stmt = update(Job).where(Job.id == job_id, Job.enqueued_at.is_(None)).values(enqueued_at=utcnow())
    session.execute(stmt)


def unsent_jobs(session: Session, *, created_before: datetime, limit: int = 100) -> list[tuple[str, str]]:
    """(kind, id) of committed queued jobs that no broker has accepted yet, oldest first."""
    rows = session.execute(
        select(Job.kind, Job.id)
        .where(
            Job.status == "queued",
            Job.enqueued_at.is_(None),
            Job.cancel_requested.is_(False),
            Job.created_at < created_before,
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [(r.kind, r.id) for r in rows]


def requeue_orphans(session: Session) -> int:
    """Embedded restart: jobs held by the dead process's in-memory queue go back to `queued`, unsent."""
    res = session.execute(
        update(Job)
        .where(Job.status.in_(("queued", "running")))
        .values(status="queued", enqueued_at=None, worker=None)
    )
    return res.rowcount


def cancel_if_queued(session: Session, job_id: str) -> bool:
    """A queued job is cancelled at once: it never starts."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now)
    )
    return res.rowcount == 1


def request_cancel_if_running(session: Session, job_id: str) -> bool:
    """A running job is asked to stop; its worker sees the flag at the next step."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(cancel_requested=True, updated_at=utcnow())
    )
    return res.rowcount == 1


def claim_running(session: Session, job_id: str, worker: str, *, redelivered: bool) -> bool:
    """Start one delivery of a job: running, one more attempt; False if someone else holds it.

    Only a redelivery (the previous worker was lost) may take over a `running` job; a duplicate
    message of a queued job loses the race on `status = 'queued'` instead of running it twice.
    """
    now = utcnow()
    statuses = ("queued", "running") if redelivered else ("queued",)
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(statuses), Job.cancel_requested.is_(False))
        .values(
            status="running", attempts=Job.attempts + 1, worker=worker, started_at=now, updated_at=now,
            error=None,
        )
    )
    return res.rowcount == 1


def save_progress(session: Session, job_id: str, progress: dict, history: list | None = None) -> bool:
    """Write progress (and history, when given) of a running job; whether a cancel was requested."""
    values: dict = {"progress": progress, "updated_at": utcnow()}
    if history is not None:
        values["history"] = history
    session.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(**values))
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return bool(flag)


def release(session: Session, job_id: str) -> None:
    """The process running it is shutting down: back to `queued`, unsent, for the next start."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(status="queued", enqueued_at=None, worker=None, updated_at=utcnow())
    )


def finish(session: Session, job_id: str, status: str, **values: object) -> bool:
    """Move a job that is not final yet to a final `status` (succeeded | failed | cancelled)."""
    assert status in FINAL_STATUSES
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(FINAL_STATUSES))
        .values(status=status, finished_at=now, updated_at=now, **values)
    )
    return res.rowcount == 1
