"""Results files whose hand-written commentary survives a benchmark's rewrite of its tables."""

from __future__ import annotations

from pathlib import Path


def write_keeping_commentary(path: Path, text: str, marker: str, default: str = "") -> None:
    """Write `text` to `path`, followed by the old file's part from `marker` on (or `default`)."""
    old = path.read_text() if path.exists() else ""
    path.write_text(text + (marker + old.split(marker, 1)[1] if marker in old else default))
