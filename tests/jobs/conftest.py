"""Real job backends: a Redis database of our own, PostgreSQL, S3 and `graft worker` processes.

The Celery workers are real processes (`python -m graft.cli worker`) consuming the same Redis
database the API sends to; API and workers share PostgreSQL and an S3 bucket, as in production.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_TOKEN, REDIS_URL, _pg_user
from tests.jobs.world import World, make_world
from tests.services import s3_settings, seaweedfs  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
LOCK_KEY = "graft-tests:owner"


@pytest.fixture(scope="module")
def redis_broker() -> Iterator[str]:
    """A broker URL on a Redis database number nobody else is using (claimed with SET NX)."""
    base = REDIS_URL.rstrip("/")
    try:
        redis.Redis.from_url(f"{base}/0", socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {base} ({exc}); start it first.")
    owner = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{db}")
        if client.dbsize() == 0 and client.set(LOCK_KEY, owner, nx=True, ex=1800):
            break
    else:
        pytest.fail("No free Redis database (1-15) for the job tests; flush stale ones.")
    try:
        yield f"{base}/{db}"
    finally:
        client.flushdb()


@pytest.fixture(scope="module")
def module_database(pg_server: str) -> Iterator[str]:
    """A PostgreSQL database shared by the API and the workers of one test module."""
    name = f"graft_jobs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{_pg_user()}@127.0.0.1:5432/{name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def queue_settings(
    seaweedfs, module_database: str, redis_broker: str, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> Settings:
    """Production-shaped settings: PostgreSQL, an S3 bucket and the Redis broker."""
    return s3_settings(
        seaweedfs, module_database, tmp_path_factory.mktemp("api"), broker_url=redis_broker,
        bootstrap_token=ADMIN_TOKEN,
    )


@pytest.fixture(scope="module")
def queue_client(queue_settings: Settings) -> Iterator[TestClient]:
    """The API on the production-shaped settings (jobs go to Celery), authenticated as admin."""
    app = create_app(queue_settings)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a worker process reads its settings from."""
    env = {
        **os.environ,
        "GRAFT_DATABASE_URL": settings.resolved_database_url,
        "GRAFT_ARTIFACTS_URL": settings.resolved_artifacts_url,
        "GRAFT_BROKER_URL": settings.broker_url or "",
        "GRAFT_DATA_DIR": str(settings.data_dir),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    if settings.s3_endpoint_url:
        env["GRAFT_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


@dataclass
class Worker:
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the job in hand is lost with the process, as when a machine dies."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Workers:
    """Starts `graft worker` processes on the test backends; stops them all at the end."""

    settings: Settings
    folder: Path
    running: list[Worker] = field(default_factory=list)
    module: str = "graft.cli"
    """What `python -m` runs: the `graft` command line (bench.scale uses bench.device_wait)."""

    def start(self, **env: str) -> Worker:
        """A worker that has connected to the broker and is ready to take jobs."""
        return self.ready(self.launch(**env))

    def launch(self, **env: str) -> Worker:
        """A worker process started, not yet waited for (start several at once, then `ready` each)."""
        log_path = self.folder / f"worker-{len(self.running)}.log"
        name = f"w{len(self.running)}-{uuid.uuid4().hex[:6]}@%h"
        cmd = [sys.executable, "-m", self.module, "worker", "--hostname", name, "--loglevel", "info"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=worker_env(self.settings, **env), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log_path)
        self.running.append(worker)
        return worker

    def ready(self, worker: Worker) -> Worker:
        """`worker` once it has connected to the broker; fails the test if it never does."""
        deadline = time.monotonic() + 90
        while " ready." not in worker.log():
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                worker.stop()
                pytest.fail(f"the Celery worker did not start; its log:\n{worker.log()[-4000:]}")
            time.sleep(0.2)
        return worker

    def warm(self) -> Worker:
        """The running worker, or a new one."""
        alive = [w for w in self.running if w.proc.poll() is None]
        return alive[0] if alive else self.start()

    def stop_all(self) -> None:
        for worker in self.running:
            worker.stop()


@pytest.fixture(scope="module")
def workers(queue_settings: Settings, queue_client: TestClient, tmp_path_factory) -> Iterator[Workers]:
    """Real Celery worker processes; the API (and its migrations) are up before the first starts."""
    pool = Workers(queue_settings, tmp_path_factory.mktemp("workers"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session")
def embedded_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One embedded-mode app (SQLite, local folder, in-process runner) shared by the job tests."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("embedded") / "graft", bootstrap_token=ADMIN_TOKEN)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="session")
def embedded_world(embedded_api: TestClient) -> World:
    """f, g_T, g_S and a dataset uploaded once to the embedded app (uploads cost seconds each)."""
    return make_world(embedded_api, "emb")
