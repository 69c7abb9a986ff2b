"""Start and stop what lives beside the HTTP routes: the job dispatcher/runner and the model cache."""

from __future__ import annotations

from fastapi import FastAPI

from app.compositions import runtime as compositions_runtime
from app.jobs import runtime as jobs_runtime
from app.ops.metrics import process_stopped


def start(app: FastAPI) -> None:
    """Called once when the server starts (lifespan)."""
    jobs_runtime.start(app)
    compositions_runtime.start(app)


def stop(app: FastAPI) -> None:
    """Called once when the server stops."""
    compositions_runtime.stop(app)
    jobs_runtime.stop(app)
    process_stopped()
