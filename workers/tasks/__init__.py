"""Celery tasks: thin and idempotent (load the job → run the engine → register), one module each.

Task `graft.<name>` lives in `workers.tasks.<name>` and exposes `execute(job_id, ctx)`, which the
embedded in-process runner calls directly.
"""
