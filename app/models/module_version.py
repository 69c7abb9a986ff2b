from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, utcnow


class ModuleVersion(Base):
    """One immutable artifact of a module: bytes addressed by sha256, shapes, lineage and metrics."""

    __tablename__ = "module_versions"
    __table_args__ = (
        UniqueConstraint("module_id", "version", name="uq_module_versions_module_version"),
        UniqueConstraint("module_id", "sha256", name="uq_module_versions_module_sha256"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    module_id: Mapped[int] = mapped_column(ForeignKey("modules.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(32))
    # Content address in the artifact store (the store's key, not a URL: the store may move).
    storage_key: Mapped[str] = mapped_column(String(256))
    input_shape: Mapped[list]  # [null, C, H, W]: null is the batch dimension
    output_shape: Mapped[list]
    arch: Mapped[dict | None]  # safetensors only: the built-in architecture spec
    trained_on: Mapped[list] = mapped_column(default=list)
    metrics: Mapped[dict] = mapped_column(default=dict)
    description: Mapped[str | None] = mapped_column(Text)
    # Lineage: [{"name", "version", "role"}] of the versions this one was made from (teacher, student…)
    parents: Mapped[list] = mapped_column(default=list)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # A job registers at most one version per output role, even when it runs twice.
    job_role: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    module: Mapped[Module] = relationship(back_populates="versions", lazy="raise")  # noqa: F821
