"""Jobs leave only after their transaction commits, and a committed job is never left unqueued."""

from __future__ import annotations

import json
import uuid

import redis
from fastapi.testclient import TestClient

from app.config import Settings
from app.jobs import repository, runtime
from app.jobs.dispatch import JOB_QUEUE, enqueue_after_commit, set_dispatch
from app.main import create_app
from tests.conftest import ADMIN_TOKEN


def _new_job(session) -> str:
    job = repository.create(session, job_id=str(uuid.uuid4()), kind="transplant", request={},
                            owner_token_id=None)
    enqueue_after_commit(session, "graft.transplant", job.id)
    return job.id


def test_sent_after_commit_and_never_after_rollback(embedded_settings: Settings) -> None:
    app = create_app(embedded_settings)  # not started: we install a recording dispatcher ourselves
    factory = app.state.sessionmaker
    sent: list[tuple[str, str]] = []
    set_dispatch(factory, runtime.marking_sent(factory, lambda task, job_id: sent.append((task, job_id))))
    with factory() as session:
        _new_job(session)
        assert sent == []  # nothing leaves before the commit
        session.rollback()
    assert sent == []
    with factory() as session:
        job_id = _new_job(session)
        session.commit()
    assert sent == [("graft.transplant", job_id)]
    with factory() as session:
        assert repository.get(session, job_id).enqueued_at is not None
    assert runtime.reconcile_once(factory, runtime.marking_sent(factory, sent.append), grace_s=0) == 0


def test_broker_down_at_commit_then_the_reconciler_sends_it(redis_broker: str, tmp_path) -> None:
    nowhere = "redis://127.0.0.1:1/0"
    down = Settings(data_dir=tmp_path / "graft", broker_url=nowhere, bootstrap_token=ADMIN_TOKEN)
    app = create_app(down)
    with TestClient(app):
        factory = app.state.sessionmaker
        with factory() as session:
            job_id = _new_job(session)
            session.commit()  # the send fails (nothing listens on port 1); the commit stands
        with factory() as session:
            job = repository.get(session, job_id)
            assert job.status == "queued" and job.enqueued_at is None
        # A fresh job is the business of its own after-commit send: the periodic round leaves it.
        up = down.model_copy(update={"broker_url": redis_broker})
        client = runtime.celery_client(up)

        def send(task: str, jid: str) -> None:
            client.send_task(task, args=[jid], task_id=jid, queue=JOB_QUEUE)

        dispatch = runtime.marking_sent(factory, send)
        assert runtime.reconcile_once(factory, dispatch, grace_s=runtime.RECONCILE_GRACE_S) == 0
        assert runtime.reconcile_once(factory, dispatch, grace_s=0) == 1
        assert runtime.reconcile_once(factory, dispatch, grace_s=0) == 0  # sent once
        with factory() as session:
            assert repository.get(session, job_id).enqueued_at is not None
    broker = redis.Redis.from_url(redis_broker)
    messages = [json.loads(m) for m in broker.lrange(JOB_QUEUE, 0, -1)]
    assert [(m["headers"]["task"], m["headers"]["id"]) for m in messages] == [("graft.transplant", job_id)]
    broker.delete(JOB_QUEUE)
