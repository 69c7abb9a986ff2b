"""Operations: liveness, readiness (database, object store, queue) and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.jobs.runtime import ping_queue
from app.ops.metrics import process_registry

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A backend is unreachable; `checks` says which."}})
def readyz(request: Request) -> JSONResponse:
    """Whether the database, the object store and (when configured) the queue answer."""
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason goes to the log
        log.warning("readyz: database: %s", exc)
        checks["database"] = "unreachable"
    try:
        state.store.ping()
        checks["object_store"] = "ok"
    except Exception as exc:
        log.warning("readyz: object store: %s", exc)
        checks["object_store"] = "unreachable"
    broker = state.settings.broker_url
    if broker and broker.startswith(("redis://", "rediss://")):
        try:
            ping_queue(state.settings)
            checks["queue"] = "ok"
        except Exception as exc:
            log.warning("readyz: queue: %s", exc)
            checks["queue"] = "unreachable"
    down = [name for name, status in checks.items() if status != "ok"]
    if down:
        detail = f"Not ready: {', '.join(down)} unreachable; check that backend and retry."
        return JSONResponse({"detail": detail, "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text: requests, predictions and cache of the API processes, jobs from the database."""
    text = generate_latest(process_registry())
    jobs = getattr(request.app.state, "job_metrics", None)
    if jobs is not None:
        try:
            text += generate_latest(jobs)
        except Exception as exc:  # a database hiccup must not hide the process's own metrics
            log.warning("metrics: job figures unavailable: %s", exc)
    return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)
