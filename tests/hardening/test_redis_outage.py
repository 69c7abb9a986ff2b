"""Redis (the broker) stopped: POST /v1/transplants answers 503 and writes nothing; a job committed but
never sent (the queue died between the check and the send) is sent exactly once when Redis is back.

Redis here is a system service the whole team uses, so this test runs its own `redis-server` on a free
port and stops that one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import Settings
from app.jobs import repository, runtime, service
from app.jobs.dispatch import JOB_QUEUE
from app.jobs.schemas import TransplantCreate
from app.main import create_app
from app.models import Job
from support.services import _free_ports
from support.world import make_world
from tests.conftest import ADMIN_TOKEN


class OwnRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_ports(1)[0]
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.1)
        pytest.fail("the test's own redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path):
    server = OwnRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _job_count(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_redis_down_submit_503_nothing_written_then_jobs_resume(own_redis: OwnRedis, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "graft", broker_url=own_redis.url, bootstrap_token=ADMIN_TOKEN)
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        world = make_world(api, "rd")
        factory = app.state.sessionmaker
        own_redis.stop()

        resp = api.post("/v1/transplants", json={**world.refs(), "method": "back_distillation"})
        assert resp.status_code == 503, resp.text
        assert "queue" in resp.json()["detail"] and "retry" in resp.json()["detail"]
        assert _job_count(factory) == 0  # refused before the commit: no row
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["queue"] == "unreachable"
        # Still validated first: a bad request is a 4xx, not a 503, whatever the queue's state.
        unknown = {**world.refs(), "method": "back_distillation", "dataset": "nope"}
        bad = api.post("/v1/transplants", json=unknown)
        assert bad.status_code == 404, bad.text

        # The queue dying between the check and the send (or the API dying right after its commit)
        # leaves a committed job that no broker accepted: made here through the service directly.
        with factory() as session:
            job_id = service.create_transplant(
                session, TransplantCreate(**world.refs(), method="back_distillation"), owner_token_id=None
            ).id
            session.commit()
        with factory() as session:
            job = repository.get(session, job_id)
            assert job.status == "queued" and job.enqueued_at is None
        assert runtime.reconcile_once(factory, app.state.job_dispatch, grace_s=0) == 0  # still down

        own_redis.start()
        assert runtime.reconcile_once(factory, app.state.job_dispatch, grace_s=0) == 1
        assert runtime.reconcile_once(factory, app.state.job_dispatch, grace_s=0) == 0  # sent once
        with factory() as session:
            assert repository.get(session, job_id).enqueued_at is not None
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        after = api.post("/v1/transplants", json={**world.refs(), "method": "back_distillation"})
        assert after.status_code == 202, after.text
        second = after.json()["job_id"]
    broker = redis.Redis.from_url(own_redis.url)
    messages = [json.loads(m) for m in broker.lrange(JOB_QUEUE, 0, -1)]
    sent = sorted((m["headers"]["task"], m["headers"]["id"]) for m in messages)
    assert sent == sorted([("graft.transplant", job_id), ("graft.transplant", second)])
