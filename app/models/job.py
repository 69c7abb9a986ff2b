from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, utcnow

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class Job(Base):
    """A unit of GPU work (transplant, amalgamation). Its state lives here, not in Celery's backend."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # transplant | amalgamation
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    request: Mapped[dict]  # the validated request, refs resolved to exact versions
    progress: Mapped[dict] = mapped_column(default=dict)  # {"epoch", "epochs", "loss", ...}
    history: Mapped[list] = mapped_column(default=list)  # per-epoch progress, for loss curves
    result: Mapped[dict | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)  # deliveries to a worker so far
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # Set when the broker accepted the job; a queued job without it is re-sent by the reconciler.
    enqueued_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(128))
    owner_token_id: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
