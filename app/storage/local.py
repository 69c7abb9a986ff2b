"""Artifact store in a local folder (the embedded default)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from app.storage.base import ArtifactStore


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} escapes the store")
        return path

    def put_file(self, path: Path, key: str) -> None:
        dest = self._path(key)
        try:
            # Content-addressed: the bytes are there. Made young again, so the sweeper's grace period
            # covers this upload until its row commits (an old orphan could otherwise go meanwhile).
            os.utime(dest)
            return
        except FileNotFoundError:
            pass
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Copy then rename: a reader never sees a half-written object.
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".incoming-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_bytes(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        with open(self._path(key), "rb") as fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def get_to_file(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str = "sha256/") -> Iterator[str]:
        base = self.root / prefix
        if not base.exists():
            return
        for p in sorted(base.rglob("*")):
            if p.is_file() and not p.name.startswith(".incoming-"):
                yield p.relative_to(self.root).as_posix()

    def list_modified(self, prefix: str = "sha256/") -> Iterator[tuple[str, datetime]]:
        for key in self.list_keys(prefix):
            try:
                mtime = (self.root / key).stat().st_mtime
            except FileNotFoundError:  # deleted since it was listed
                continue
            yield key, datetime.fromtimestamp(mtime, UTC)

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"artifact folder {self.root} is missing")
