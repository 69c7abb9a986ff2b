"""Queries on compositions, and the module versions, aliases and jobs that the cell picker reads."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, joinedload

from app.models import Alias, Composition, Job, Module, ModuleVersion

ACTIVE_JOB_STATUSES = ("queued", "running")


def get(session: Session, composition_id: str) -> Composition | None:
    return session.get(Composition, composition_id)


def find_by_versions(
    session: Session, *, category_version_id: int, adapter_version_id: int | None, task_version_id: int
) -> Composition | None:
    query = select(Composition).where(
        Composition.category_version_id == category_version_id,
        Composition.adapter_version_id.is_(None)
        if adapter_version_id is None
        else Composition.adapter_version_id == adapter_version_id,
        Composition.task_version_id == task_version_id,
    )
    return session.scalars(query.order_by(Composition.created_at).limit(1)).first()


def list_page(
    session: Session, *, after: tuple[datetime, str] | None, limit: int,
    category: str | None = None, task: str | None = None,
) -> list[Composition]:
    """Compositions oldest first, keyset-paginated on (created_at, id)."""
    query = select(Composition).order_by(Composition.created_at, Composition.id).limit(limit)
    if category:
        query = query.where(Composition.category == category)
    if task:
        query = query.where(Composition.task == task)
    if after is not None:
        query = query.where(tuple_(Composition.created_at, Composition.id) > tuple_(*after))
    return list(session.scalars(query))


def versions_by_id(session: Session, ids: Iterable[int]) -> dict[int, ModuleVersion]:
    ids = {i for i in ids if i is not None}
    if not ids:
        return {}
    query = select(ModuleVersion).options(joinedload(ModuleVersion.module)).where(ModuleVersion.id.in_(ids))
    return {v.id: v for v in session.scalars(query)}


def versions_of(
    session: Session, kind: str, *, category: str | None = None, task: str | None = None
) -> list[ModuleVersion]:
    """Every version of the modules of `kind` (optionally of one category/task), module loaded."""
    query = (
        select(ModuleVersion)
        .join(Module, Module.id == ModuleVersion.module_id)
        .options(joinedload(ModuleVersion.module))
        .where(Module.kind == kind)
    )
    if category is not None:
        query = query.where(Module.category == category)
    if task is not None:
        query = query.where(Module.task == task)
    return list(session.scalars(query))


def aliased_version_ids(session: Session) -> set[int]:
    return set(session.scalars(select(Alias.version_id).distinct()))


def labels_of(session: Session, kind: str, column: str) -> list[str]:
    """Distinct non-null `category` or `task` of the modules of `kind`, sorted."""
    col = getattr(Module, column)
    query = select(col).where(Module.kind == kind, col.is_not(None)).distinct()
    return sorted(session.scalars(query))


def active_transplant_jobs(session: Session) -> list[Job]:
    query = select(Job).where(Job.kind == "transplant", Job.status.in_(ACTIVE_JOB_STATUSES))
    return list(session.scalars(query.order_by(Job.created_at)))


def newest_composition_by_cell(session: Session) -> dict[tuple[str, str], str]:
    query = select(Composition.category, Composition.task, Composition.id).order_by(
        Composition.created_at, Composition.id
    )
    # Later rows overwrite earlier ones: the newest composition of each cell wins.
    return {(c, t): cid for c, t, cid in session.execute(query) if c is not None and t is not None}
