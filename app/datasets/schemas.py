"""Request and response bodies of the datasets domain."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.modules.schemas import NAME_PATTERN


class DatasetMeta(BaseModel):
    """The `meta` part of a dataset upload."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Lowercase letters, digits, `.`, `_`, `-`.")
    category: str | None = Field(default=None, max_length=128)


class DatasetRead(BaseModel):
    id: str
    name: str
    category: str | None
    n: int
    input_shape: list[int | None]
    y_shape: list[int | None] | None
    sha256: str
    size: int
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[DatasetRead]
    next_cursor: str | None
