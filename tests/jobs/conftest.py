"""Real job backends: a Redis database of our own, PostgreSQL, S3 and `graft worker` processes.

The Celery workers are real processes (`python -m graft.cli worker`) consuming the same Redis
database the API sends to; API and workers share PostgreSQL and an S3 bucket, as in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from support.services import s3_settings
from support.workers import Workers
from support.world import World, make_world
from tests.conftest import ADMIN_TOKEN, REDIS_URL, _pg_user
from tests.services import seaweedfs  # noqa: F401 (a fixture)

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
