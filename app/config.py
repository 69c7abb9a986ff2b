"""Graft's configuration: one settings class, read from `GRAFT_*` environment variables.

Embedded defaults need nothing running (SQLite and a local artifact folder under `GRAFT_DATA_DIR`,
an in-process job runner). Production is configuration only: a PostgreSQL URL, an `s3://` artifact
URL and a Redis broker URL.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All of Graft's settings; each field maps to `GRAFT_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="GRAFT_", extra="ignore")

    env: Literal["development", "production"] = "development"
    """`production` refuses unsafe settings (a short bootstrap token)."""
    data_dir: Path = Path(".graft")
    """Folder for the embedded SQLite database and the local artifact store."""
    database_url: str | None = None
    """SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db`. Default: SQLite in `data_dir`."""
    artifacts_url: str | None = None
    """`file:///abs/path` or `s3://bucket/prefix`. Default: `data_dir/artifacts`."""
    s3_endpoint_url: str | None = None
    """Endpoint of a non-AWS S3 server (MinIO, SeaweedFS). Credentials: the usual AWS_* variables."""
    s3_region: str = "us-east-1"
    s3_multipart_threshold: int = 16 * 1024 * 1024
    """Objects above this many bytes are sent to S3 with a multipart upload; one whose uploader declared
    its sha256 goes while it is received, in parts of this size (at least 5 MiB)."""
    s3_presign_downloads: bool = False
    """Answer artifact downloads with a 307 to a presigned S3 URL, so the bytes flow from S3 to the
    client, not through the API. Off by default: clients must reach S3 (`s3_public_endpoint_url`)."""
    s3_public_endpoint_url: str | None = None
    """The S3 endpoint as clients reach it, for presigned URLs (default: `s3_endpoint_url`)."""
    s3_presign_expires_s: int = 300
    """Lifetime of a presigned download URL, in seconds."""
    broker_url: str | None = None
    """Celery broker (Redis) URL. Unset: jobs run in an in-process runner (embedded mode)."""
    bootstrap_token: str | None = None
    """A token accepted as `admin`: how a fresh install gets its first real token."""
    auth_disabled: bool = False
    """Development only: every request is treated as admin (never in production)."""
    max_upload_bytes: int = 2 * 1024**3
    """Largest accepted artifact or dataset upload."""
    probe_timeout_s: float = 60.0
    """Time limit for loading an uploaded artifact and running it once on zeros."""
    probe_max_elements: int = 64 * 1024 * 1024
    """Largest input tensor (elements) the shape probe may allocate."""
    probe_max_memory_bytes: int = 4 * 1024**3
    """Memory the load-and-probe child may take beyond torch itself, plus twice the artifact's size
    (room for its weights): a module that wants more is refused with a 422. 0: no limit."""
    job_max_attempts: int = 3
    """Deliveries of one job before it is marked failed (a worker killed mid-job redelivers it)."""
    job_visibility_timeout_s: int = 6 * 3600
    """Redis visibility timeout: longer than the longest job, or it would run twice."""
    job_time_limit_s: float = 5 * 3600
    """Wall-clock limit of one job delivery: past it the job stops at its next training step and fails
    (a step is bounded: uploaded graphs cannot loop). Keep it under job_visibility_timeout_s. 0: none."""
    predict_max_batch: int = 64
    """Dynamic batching: hard bound on the rows of one forward pass (the learned cap may be lower);
    a request with more inputs runs in several."""
    predict_max_wait_ms: float = 2.0
    """Dynamic batching: how long a request waits for others to join its batch."""
    predict_max_body_bytes: int = 256 * 1024 * 1024
    """Largest predict body (JSON or .npy); any number of inputs up to it, run in forward passes of at
    most `predict_max_batch` rows. Larger bodies get a 413."""
    model_cache_bytes: int = 512 * 1024 * 1024
    """Memory bound of the LRU cache of loaded module versions (f, h and g, each held once)."""
    serving_device: str = "cpu"
    """Device of predict forwards: `cpu`, or `cuda` / `cuda:N` when the process has one."""
    log_json: bool = False
    """Structured JSON logs (one object a line) instead of plain text."""

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.env == "production":
            if self.auth_disabled:
                raise ValueError("GRAFT_AUTH_DISABLED cannot be set when GRAFT_ENV=production")
            if self.bootstrap_token is not None and len(self.bootstrap_token) < 16:
                raise ValueError("GRAFT_BOOTSTRAP_TOKEN must be at least 16 characters in production")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'graft.db').resolve()}"

    @property
    def resolved_artifacts_url(self) -> str:
        if self.artifacts_url:
            return self.artifacts_url
        return (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def embedded_jobs(self) -> bool:
        return not self.broker_url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests build their own `Settings` and pass them to `create_app`)."""
    return Settings()


