"""The artifact store: content-addressed bytes, chosen by URI scheme (`file://` or `s3://`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path


def key_for(sha256: str) -> str:
    """Content address of an object: identical bytes are stored once."""
    return f"sha256/{sha256[:2]}/{sha256}"


class ArtifactStore(ABC):
    """Where artifact and dataset bytes live; the database holds only keys and hashes."""

    url: str

    @abstractmethod
    def put_file(self, path: Path, key: str) -> None:
        """Store the file at `path` under `key` (idempotent: same key, same bytes)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abstractmethod
    def iter_bytes(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream the object's bytes in chunks."""

    @abstractmethod
    def get_to_file(self, key: str, path: Path) -> None:
        """Download the object to a local file (workers and the composition loader use this)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (missing is fine)."""

    @abstractmethod
    def list_keys(self, prefix: str = "sha256/") -> Iterator[str]:
        """Every key under `prefix` (the orphan sweeper compares these with the database)."""

    def list_modified(self, prefix: str = "sha256/") -> Iterator[tuple[str, datetime]]:
        """Every key under `prefix` with its last-modified time (UTC); the sweeper's grace period needs it."""
        raise NotImplementedError

    @abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached (readiness probe)."""

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_bytes(key))
