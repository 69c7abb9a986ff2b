"""Pick the artifact store by URI scheme."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from app.config import Settings
from app.storage.base import ArtifactStore, key_for
from app.storage.local import LocalArtifactStore

__all__ = ["ArtifactStore", "LocalArtifactStore", "key_for", "open_store"]


def open_store(settings: Settings) -> ArtifactStore:
    """The store named by `settings.resolved_artifacts_url` (`file://…` or `s3://bucket/prefix`)."""
    url = settings.resolved_artifacts_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalArtifactStore(Path(parsed.path))
    if parsed.scheme == "s3":
        from app.storage.s3 import S3ArtifactStore

        return S3ArtifactStore.from_settings(settings)
    raise ValueError(f"GRAFT_ARTIFACTS_URL must start with file:// or s3://, not {url!r}")
