"""Shared fixtures: real backends (SQLite+folder, PostgreSQL, Redis) and an app on each of them.

The S3 server (SeaweedFS) fixture lives in tests/services.py; the Celery worker fixture in tests/jobs.
A service the tests need and cannot reach fails the run with a clear message, never a silent skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

torch.set_num_threads(1)

pytest_plugins = ["tests.services"]

PG_ADMIN_DSN = os.environ.get("GRAFT_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS_URL = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379")
ADMIN_TOKEN = "test-bootstrap-admin-token"


def _pg_user() -> str:
    return dict(p.split("=", 1) for p in PG_ADMIN_DSN.split())["user"]


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL admin DSN, checked once; fails loudly if the server is down."""
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN!r} ({exc}); start it first.")
    return PG_ADMIN_DSN


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (SQLAlchemy URL); dropped afterwards."""
    name = f"graft_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{_pg_user()}@127.0.0.1:5432/{name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    """The embedded defaults (SQLite and a local folder) in a fresh data folder."""
    return Settings(data_dir=tmp_path / "graft", bootstrap_token=ADMIN_TOKEN)


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def embedded_client(embedded_settings: Settings) -> Iterator[TestClient]:
    """A TestClient on the embedded defaults, authenticated as admin by default."""
    app = create_app(embedded_settings)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


BACKENDS = ("sqlite_local", "postgres_s3")


@pytest.fixture(params=BACKENDS)
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for each configuration the API tests run on: SQLite+folder, PostgreSQL+SeaweedFS S3."""
    if request.param == "sqlite_local":
        return Settings(data_dir=tmp_path / "graft", bootstrap_token=ADMIN_TOKEN)
    from support.services import s3_settings

    return s3_settings(
        request.getfixturevalue("seaweedfs"), request.getfixturevalue("pg_database"), tmp_path / "graft",
        bootstrap_token=ADMIN_TOKEN,
    )


@pytest.fixture
def api(backend_settings: Settings) -> Iterator[TestClient]:
    """A TestClient (admin header set) on each backend configuration in turn."""
    app = create_app(backend_settings)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client
