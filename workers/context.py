"""A worker process's own backends, built once from `GRAFT_*` settings and reused by every task."""

from __future__ import annotations

import os
import socket
from functools import lru_cache

from app.config import Settings
from app.db.session import make_engine, make_sessionmaker
from app.jobs.context import JobContext
from app.storage import open_store


@lru_cache(maxsize=1)
def get_context() -> JobContext:
    """Engine, session factory and artifact store of this worker process (cached per process)."""
    settings = Settings()
    engine = make_engine(settings.resolved_database_url)
    return JobContext(
        settings=settings,
        sessionmaker=make_sessionmaker(engine),
        store=open_store(settings),
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
