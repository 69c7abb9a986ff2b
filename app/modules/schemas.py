"""Request and response bodies of the modules domain."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
KINDS = ("category", "task", "adapter")
MAX_DIMS = 8


def check_shape(shape: list[int | None]) -> list[int | None]:
    """A shape: positive ints, `null` allowed only first (the batch dimension)."""
    if not shape:
        raise ValueError("must list at least one dimension, e.g. [null, 3, 32, 32]")
    if len(shape) > MAX_DIMS:
        raise ValueError(f"has {len(shape)} dimensions; at most {MAX_DIMS} are allowed")
    for i, d in enumerate(shape):
        if d is None and i > 0:
            raise ValueError("may hold null only as its first (batch) dimension")
        if d is not None and d < 1:
            raise ValueError("dimensions must be positive integers (null for the batch dimension)")
    return shape


class ModuleCreate(BaseModel):
    """A new module: a category module names `category`, a task module `task`, an adapter both."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Lowercase letters, digits, `.`, `_`, `-`.")
    kind: Literal["category", "task", "adapter"]
    category: str | None = Field(default=None, max_length=128)
    task: str | None = Field(default=None, max_length=128)
    description: str | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def _kind_fields(self) -> ModuleCreate:
        if self.kind in ("category", "adapter") and not self.category:
            raise ValueError(f"a {self.kind} module must name its `category`")
        if self.kind in ("task", "adapter") and not self.task:
            raise ValueError(f"a {self.kind} module must name its `task`")
        return self


class VersionMeta(BaseModel):
    """The `meta` part of a version upload."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["torch_export", "torchscript", "safetensors"]
    input_shape: list[int | None] = Field(description="`null` first is the batch dimension.")
    trained_on: list[str] = Field(default_factory=list, max_length=10_000)
    metrics: dict[str, Any] = Field(default_factory=dict)
    description: str | None = Field(default=None, max_length=10_000)
    arch: dict[str, Any] | None = Field(default=None, description="safetensors only: the architecture spec.")
    sha256: str | None = Field(
        default=None, pattern=SHA256_PATTERN,
        description="The file's sha256 (lowercase hex), declared before the `file` part: the server then "
        "stores the bytes while they arrive, and refuses the upload (422) if they do not match.",
    )

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int | None]) -> list[int | None]:
        return check_shape(v)

    @model_validator(mode="after")
    def _arch_with_safetensors(self) -> VersionMeta:
        if self.format == "safetensors" and not self.arch:
            raise ValueError("format safetensors needs `arch`, the spec of a built-in architecture")
        if self.format != "safetensors" and self.arch is not None:
            raise ValueError("`arch` is only allowed with format safetensors")
        return self


class VersionSummary(BaseModel):
    version: int
    sha256: str
    format: str
    input_shape: list[int | None]
    output_shape: list[int | None]
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class ModuleRead(BaseModel):
    id: int
    name: str
    kind: str
    category: str | None
    task: str | None
    description: str | None
    created_at: datetime
    latest_version: int | None = None


class ModuleDetail(ModuleRead):
    versions: list[VersionSummary]
    aliases: dict[str, int]


class VersionRead(BaseModel):
    name: str
    kind: str
    version: int
    sha256: str
    size: int
    format: str
    input_shape: list[int | None]
    output_shape: list[int | None]
    arch: dict[str, Any] | None
    trained_on: list[str]
    metrics: dict[str, Any]
    description: str | None
    parents: list[dict[str, Any]]
    job_id: str | None
    job_role: str | None
    aliases: list[str] = Field(default_factory=list)
    created_at: datetime


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31 - 1)


class AliasRead(BaseModel):
    name: str
    alias: str
    version: int


class ModulePage(BaseModel):
    items: list[ModuleRead]
    next_cursor: str | None


class VersionPage(BaseModel):
    items: list[VersionRead]
    next_cursor: str | None
