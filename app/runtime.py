"""Start and stop what lives beside the HTTP routes: the job dispatcher/runner, the model cache and the
upload probe's forkserver."""

from __future__ import annotations

from fastapi import FastAPI

from app.jobs import runtime as jobs_runtime
from app.modules.probe import start_forkserver
from app.ops.metrics import process_stopped
from app.serving import runtime as serving_runtime


def start(app: FastAPI) -> None:
    """Called once when the server starts (lifespan)."""
    start_forkserver()  # the upload probe's; warms up in the background
    jobs_runtime.start(app)
    serving_runtime.start(app)


def stop(app: FastAPI) -> None:
    """Called once when the server stops."""
    serving_runtime.stop(app)
    jobs_runtime.stop(app)
    process_stopped()
