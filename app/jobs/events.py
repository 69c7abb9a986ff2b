"""Server-sent events of one job: poll its row, send what changed, end with the final status."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.jobs import repository
from app.models.job import FINAL_STATUSES

POLL_S = 0.3
KEEPALIVE_S = 15.0


def _snapshot(factory: sessionmaker[Session], job_id: str) -> dict | None:
    with factory() as session:
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


async def job_events(
    factory: sessionmaker[Session], job_id: str, *, poll_s: float = POLL_S
) -> AsyncIterator[str]:
    """`status` events when the status changes, `progress` events when progress does; then the end.

    Each poll is a short session on a worker thread; between polls the stream holds no thread, no
    connection and no transaction, so many clients can follow jobs at once.
    """
    last: dict | None = None
    seq = 0
    quiet_since = time.monotonic()
    while True:
        snap = await run_in_threadpool(_snapshot, factory, job_id)
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
        await asyncio.sleep(poll_s)
