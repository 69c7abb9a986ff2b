"""A real Graft server (uvicorn subprocess, embedded backends in a tmp folder) for the client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from graft import Client
from graft.local_server import LocalServer


@pytest.fixture(scope="session")
def graft_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server for the session; tests use unique module names so they do not collide."""
    server = LocalServer(tmp_path_factory.mktemp("graft-server") / "data")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"the Graft server did not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def client(graft_server: LocalServer) -> Iterator[Client]:
    with Client(graft_server.url, graft_server.token) as c:
        yield c
