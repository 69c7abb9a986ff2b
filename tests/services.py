"""The S3 server fixture (SeaweedFS, one per run); the server itself is support/services.py's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.services import S3Server, start_seaweedfs, stop_seaweedfs


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the whole test run."""
    proc, server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_seaweedfs(proc)
