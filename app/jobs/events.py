"""Server-sent events of one job: poll its row, send what changed, end with the final status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from sqlalchemy.orm import Session, sessionmaker

from app.jobs import repository
from app.models.job import FINAL_STATUSES

POLL_S = 0.3
KEEPALIVE_S = 15.0


def _snapshot(session: Session, job_id: str) -> dict | None:
    job = repository.get(session, job_id)
    if job is None:
        return None
    return {
        "id": job.id,
        "status": job.status,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
    }


def _event(name: str, seq: int, data: dict) -> str:
    return f"id: {seq}\nevent: {name}\ndata: {json.dumps(data, default=str)}\n\n"


def job_events(factory: sessionmaker[Session], job_id: str, *, poll_s: float = POLL_S) -> Iterator[str]:
    """`status` events when the status changes, `progress` events when progress does; then the end.

    Each poll uses its own short session, so a long-lived stream holds no connection or transaction.
    """
    last: dict | None = None
    seq = 0
    quiet_since = time.monotonic()
    while True:
        with factory() as session:
            snap = _snapshot(session, job_id)
        if snap is None:  # deleted while we watched
            yield _event("error", seq + 1, {"id": job_id, "detail": "the job no longer exists"})
            return
        if last is None or snap["status"] != last["status"]:
            seq += 1
            yield _event("status", seq, snap)
            quiet_since = time.monotonic()
        elif snap != last:
            seq += 1
            yield _event("progress", seq, snap)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            yield ": keep-alive\n\n"  # proxies close streams that stay silent
            quiet_since = time.monotonic()
        if snap["status"] in FINAL_STATUSES:
            return
        last = snap
        time.sleep(poll_s)
