"""One delivery of a job against a real database: claims, redeliveries, cancel, shutdown and failures.

The work function is a stand-in for the engine (the real one runs in tests/jobs); everything else —
the job row, the conditional updates, the final transaction — is the production code on SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import torch
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import migrate
from app.db.session import make_engine, make_sessionmaker
from app.jobs import repository
from app.jobs.context import JobContext
from app.storage import open_store
from transplant import Cancelled
from workers.lifecycle import JobFailed, JobRun, run_job


@pytest.fixture
def ctx(embedded_settings: Settings) -> Iterator[JobContext]:
    embedded_settings.data_dir.mkdir(parents=True)
    engine = make_engine(embedded_settings.resolved_database_url)
    migrate.upgrade(engine)
    yield JobContext(embedded_settings, make_sessionmaker(engine), open_store(embedded_settings), "test:1")
    engine.dispose()


def new_job(ctx: JobContext, **values) -> str:
    with ctx.sessionmaker() as session:
        job = repository.create(session, job_id=str(uuid.uuid4()), kind="transplant", request={"x": 1},
                                owner_token_id=None)
        for key, value in values.items():
            setattr(job, key, value)
        session.commit()
        return job.id


def job(ctx: JobContext, job_id: str):
    with ctx.sessionmaker() as session:
        return repository.get(session, job_id)


def succeed(run: JobRun):
    run.on_epoch_end({"epoch": 1, "epochs": 1, "step": 1, "loss": 0.5})
    return lambda session: {"adapter": None, "metrics": {"ok": 1}}


def test_success_writes_result_progress_and_history(ctx) -> None:
    job_id = new_job(ctx)
    assert run_job(job_id, ctx, succeed) == "succeeded"
    done = job(ctx, job_id)
    assert done.status == "succeeded" and done.result == {"adapter": None, "metrics": {"ok": 1}}
    assert done.attempts == 1 and done.worker == "test:1" and done.finished_at is not None
    assert done.history == [{"epoch": 1, "epochs": 1, "step": 1, "loss": 0.5}]
    assert done.progress["stage"] == "done" and done.progress["loss"] == 0.5
    assert run_job(job_id, ctx, succeed) is None  # a final job is left alone
    assert job(ctx, job_id).attempts == 1


def test_duplicate_message_never_runs_a_running_job_twice(ctx) -> None:
    job_id = new_job(ctx, status="running", attempts=1, worker="other:2")
    ran = []
    assert run_job(job_id, ctx, lambda run: ran.append(1), redelivered=False) is None
    assert ran == [] and job(ctx, job_id).worker == "other:2"
    # A redelivery (its worker was lost) takes it over and starts again.
    assert run_job(job_id, ctx, succeed, redelivered=True) == "succeeded"
    assert job(ctx, job_id).attempts == 2


def test_lost_too_often_fails_with_the_reason(ctx) -> None:
    job_id = new_job(ctx, status="running", attempts=ctx.settings.job_max_attempts)
    assert run_job(job_id, ctx, succeed, redelivered=True) is None
    failed = job(ctx, job_id)
    assert failed.status == "failed" and failed.attempts == ctx.settings.job_max_attempts + 1
    lost = ctx.settings.job_max_attempts
    assert failed.error.startswith(f"The worker running this job was lost {lost} times")


def test_cancelled_before_start_and_during_the_run(ctx) -> None:
    queued = new_job(ctx, cancel_requested=True)
    assert run_job(queued, ctx, succeed) is None
    assert job(ctx, queued).status == "cancelled" and job(ctx, queued).attempts == 0

    running = new_job(ctx)

    def work(run: JobRun):
        with ctx.sessionmaker() as session:
            assert repository.request_cancel_if_running(session, running)
            session.commit()
        run.flush(force=True)
        assert run.should_stop()
        return lambda session: pytest.fail("a cancelled job must not register anything")

    assert run_job(running, ctx, work) == "cancelled"
    assert job(ctx, running).status == "cancelled" and job(ctx, running).result is None


def test_shutdown_puts_the_job_back_in_the_queue(ctx) -> None:
    job_id = new_job(ctx)

    def work(run: JobRun):
        ctx.stopping.set()
        assert run.should_stop()
        raise Cancelled("stopping")

    assert run_job(job_id, ctx, work) == "queued"
    back = job(ctx, job_id)
    assert back.status == "queued" and back.enqueued_at is None and back.attempts == 1


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (JobFailed("Module f@1 failed to load: bad zip."), "Module f@1 failed to load: bad zip."),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "Out of memory on the GPU"),
        (MemoryError(), "Out of memory on the CPU"),
        (KeyError("epochs"), "The job failed with KeyError: 'epochs'"),
    ],
)
def test_failures_are_explicit(ctx, error: Exception, message: str) -> None:
    job_id = new_job(ctx)

    def work(run: JobRun):
        raise error

    assert run_job(job_id, ctx, work) == "failed"
    failed = job(ctx, job_id)
    assert failed.status == "failed" and failed.error.startswith(message)
    assert failed.progress["stage"] == "failed"


def test_failed_registration_rolls_back_and_cleans_up(ctx) -> None:
    job_id = new_job(ctx)
    cleaned = []

    def work(run: JobRun):
        run.on_rollback.append(lambda session: cleaned.append(isinstance(session, Session)))

        def register(session: Session) -> dict:
            raise RuntimeError("the store went away")

        return register

    assert run_job(job_id, ctx, work) == "failed"
    assert cleaned == [True]
    assert "the store went away" in job(ctx, job_id).error
