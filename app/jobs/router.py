"""Jobs: POST /v1/transplants and /v1/amalgamations, GET /v1/jobs[/{id}[/events]], cancel."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.deps import ReadAuth, SessionDep, SettingsDep, WriteAuth
from app.jobs import service
from app.jobs.events import job_events
from app.jobs.runtime import ping_queue
from app.jobs.schemas import AmalgamationCreate, JobDetail, JobList, JobQueued, JobRead, TransplantCreate

router = APIRouter(tags=["jobs"])

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


_QUEUE_DOWN = {503: {"description": "The job queue is unreachable; nothing was queued, retry later."}}


@router.post("/v1/transplants", status_code=202, response_model=JobQueued, responses=_QUEUE_DOWN)
def create_transplant(
    body: TransplantCreate, session: SessionDep, settings: SettingsDep, principal: WriteAuth
) -> JobQueued:
    """Queue a transplant job; everything is checked first, the job leaves after the commit."""
    job = service.create_transplant(session, body, owner_token_id=principal.token_id)
    ping_queue(settings)  # a 503 now rolls the job back: nothing is accepted that cannot be sent
    session.commit()
    return JobQueued(job_id=job.id, status=job.status)


@router.post("/v1/amalgamations", status_code=202, response_model=JobQueued, responses=_QUEUE_DOWN)
def create_amalgamation(
    body: AmalgamationCreate, session: SessionDep, settings: SettingsDep, principal: WriteAuth
) -> JobQueued:
    """Queue an amalgamation job (one student from several teachers); checked first, sent after commit."""
    job = service.create_amalgamation(session, body, owner_token_id=principal.token_id)
    ping_queue(settings)
    session.commit()
    return JobQueued(job_id=job.id, status=job.status)


@router.get("/v1/jobs", response_model=JobList)
def list_jobs(
    session: SessionDep,
    _: ReadAuth,
    status: Status | None = None,
    kind: str | None = Query(None, max_length=32),
    limit: int = Query(50, ge=1, le=service.MAX_PAGE),
    cursor: str | None = Query(None, max_length=512),
) -> JobList:
    """Jobs, newest first, filtered by status and kind."""
    jobs, next_cursor = service.list_jobs(session, limit=limit, cursor=cursor, status=status, kind=kind)
    return JobList(items=[JobRead.model_validate(j) for j in jobs], next_cursor=next_cursor)


@router.get("/v1/jobs/{job_id}", response_model=JobDetail)
def get_job(job_id: str, session: SessionDep, _: ReadAuth) -> JobDetail:
    """One job: status, progress, history, and its result or error."""
    return JobDetail.model_validate(service.get_job(session, job_id))


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}},
)
def job_events_stream(job_id: str, request: Request, session: SessionDep, _: ReadAuth) -> StreamingResponse:
    """Server-sent events: `status` and `progress` (each the job's state) until the job ends."""
    service.get_job(session, job_id)  # 404 before the stream starts
    session.close()
    return StreamingResponse(
        job_events(request.app.state.sessionmaker, job_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: str, session: SessionDep, principal: WriteAuth) -> JobRead:
    """Cancel: a queued job never starts, a running one stops at its next step; 409 if it ended.

    Only the token that queued the job, or an admin, may cancel it (403 otherwise).
    """
    job = service.cancel_job(session, job_id, principal)
    session.commit()
    return JobRead.model_validate(job)
