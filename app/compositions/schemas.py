"""Request and response bodies of compositions, predict and the grid."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VersionRef(BaseModel):
    """An exact module version."""

    name: str
    version: int


class RefIn(BaseModel):
    """A reference object; `version` is a number, an alias or `latest`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int | str


Ref = str | RefIn


class CompositionCreate(BaseModel):
    """Either a cell (`category` + `task`) or explicit pieces (category_module, adapter, task_module)."""

    model_config = ConfigDict(extra="forbid")

    category: str | None = Field(None, description="Cell mode: the category; the service picks the pieces.")
    task: str | None = Field(None, description="Cell mode: the task.")
    category_module: Ref | None = Field(None, description='Explicit mode: "name@N", "name@alias", "name".')
    adapter: Ref | None = Field(None, description="Explicit mode: the adapter; null for a native pair.")
    task_module: Ref | None = Field(None, description="Explicit mode: the task module.")

    @model_validator(mode="after")
    def _one_mode(self) -> CompositionCreate:
        cell = self.category is not None or self.task is not None
        explicit = any(v is not None for v in (self.category_module, self.adapter, self.task_module))
        if cell and explicit:
            raise ValueError(
                "give either category and task, or category_module, adapter and task_module, not both"
            )
        if cell and not (self.category and self.task):
            raise ValueError("a cell needs both category and task")
        if not cell and not (self.category_module and self.task_module):
            raise ValueError(
                "give category and task, or at least category_module and task_module (adapter may be null)"
            )
        return self

    @property
    def is_cell(self) -> bool:
        return self.category is not None


class Selection(BaseModel):
    """Why a cell is served by these pieces (app/compositions/selection.py)."""

    rule: Literal["alias", "best held-out metric", "newest", "native", "explicit"]
    reason: str


class CompositionRead(BaseModel):
    """A composition pinned to exact versions."""

    id: str
    category: str | None
    task: str | None
    category_module: VersionRef
    adapter: VersionRef | None = Field(description="null for a native teacher pair")
    task_module: VersionRef
    input_shape: list[int | None]
    output_shape: list[int | None]
    created_at: datetime
    selection: Selection | None = Field(
        None, description="Cell compositions, in the answer to POST: the rule that picked the pieces.")


class CompositionPage(BaseModel):
    items: list[CompositionRead]
    next_cursor: str | None


class PredictRequest(BaseModel):
    """JSON predict body: a batch of N inputs, each of the composition's input shape."""

    inputs: list[Any] = Field(description="Nested list of numbers, N × input_shape (N ≥ 1).")


class PredictResponse(BaseModel):
    outputs: list[Any] = Field(description="Nested list of numbers, N × output_shape.")


class GridCell(BaseModel):
    category: str
    task: str
    status: Literal["native", "transplanted", "running", "missing"]
    composition: str | None = Field(None, description="Id of the newest composition of this cell, if any.")
    metrics: dict | None = Field(None, description="The metrics of the adapter (transplanted cells) or task "
                                 "module (native cells) a composition of this cell would serve.")
    category_module: VersionRef | None = None
    adapter: VersionRef | None = None
    task_module: VersionRef | None = None
    job_id: str | None = Field(None, description="The active transplant job of the cell (running cells).")
    selection: Selection | None = Field(None, description="The rule that picked the pieces a composition "
                                        "of this cell would get now.")


class Grid(BaseModel):
    categories: list[str]
    tasks: list[str]
    cells: list[GridCell]
