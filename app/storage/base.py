"""The artifact store: content-addressed bytes, chosen by URI scheme (`file://` or `s3://`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path


def key_for(sha256: str) -> str:
    """Content address of an object: identical bytes are stored once."""
    return f"sha256/{sha256[:2]}/{sha256}"


class PendingPut(ABC):
    """An object being written under its final key while its bytes still arrive (an S3 multipart upload).

    The receiver writes the bytes to a local file and reports how far it got (`available`, then
    `finish`); whole parts go out from that file as they land, so sending overlaps receiving. Nothing is
    visible under the key until `complete`; `abort` (a no-op after `complete`) drops what was sent.
    """

    next_part_end: int
    """Call `available` once this many bytes are on disk (flushed): a whole part is ready to send."""

    @abstractmethod
    def available(self, nbytes: int) -> None:
        """The file's first `nbytes` bytes are on disk: send every whole part among them (never blocks)."""

    @abstractmethod
    def finish(self, size: int) -> None:
        """The file is complete at `size` bytes: send what is left (never blocks)."""

    @abstractmethod
    def wait(self) -> None:
        """Block until every part is sent; raise the first failure."""

    @abstractmethod
    def complete(self) -> None:
        """Make the object visible under its key (after the digest and the probe have been checked)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop every part sent so far; idempotent, and a no-op after `complete`."""


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

    def begin_put(self, key: str, path: Path, *, expected_size: int | None) -> PendingPut | None:
        """Start storing the file growing at `path` under `key` while it is received, or None if this
        store does not stream (then `put_file` runs once the file is complete)."""
        return None

    def abort_stale_uploads(self, older_than: datetime, *, dry_run: bool = False) -> list[str]:
        """Abort incomplete streamed uploads started before `older_than` (a crash leaves them); keys."""
        return []

    def download_url(self, key: str, *, filename: str) -> str | None:
        """A short-lived URL a client can fetch the object from directly, or None to stream it via the API."""
        return None

    @abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached (readiness probe)."""

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_bytes(key))
