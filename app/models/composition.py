from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, utcnow


class Composition(Base):
    """A category module, an adapter (or none, for a native teacher pair) and a task module, pinned."""

    __tablename__ = "compositions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    category_version_id: Mapped[int] = mapped_column(ForeignKey("module_versions.id"), index=True)
    adapter_version_id: Mapped[int | None] = mapped_column(ForeignKey("module_versions.id"))
    task_version_id: Mapped[int] = mapped_column(ForeignKey("module_versions.id"), index=True)
    category: Mapped[str | None] = mapped_column(String(128), index=True)
    task: Mapped[str | None] = mapped_column(String(128), index=True)
    input_shape: Mapped[list]
    output_shape: Mapped[list]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
