"""What a job needs to run, wherever it runs: settings, a session factory, the artifact store."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.storage import ArtifactStore


@dataclass
class JobContext:
    """Handed to a task's `execute(job_id, ctx)` by a Celery worker or by the in-process runner."""

    settings: Settings
    sessionmaker: sessionmaker[Session]
    store: ArtifactStore
    worker: str
    """Name recorded on the job row (host:pid, or the Celery node name)."""
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the process shuts down: a running job stops and goes back to the queue."""
