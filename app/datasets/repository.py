"""Queries on datasets."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Dataset


def get(session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def list_datasets(
    session: Session, *, category: str | None, name: str | None, after: str | None, limit: int
) -> list[Dataset]:
    query = select(Dataset).order_by(Dataset.id).limit(limit)
    if category:
        query = query.where(Dataset.category == category)
    if name:
        query = query.where(Dataset.name == name)
    if after is not None:
        query = query.where(Dataset.id > after)
    return list(session.scalars(query))
