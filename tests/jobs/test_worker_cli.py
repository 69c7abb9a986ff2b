"""`graft worker` refuses to start without a broker or with a pool that forks after CUDA init."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from graft.cli import app


def _run(*args: str):
    result = CliRunner().invoke(app, ["worker", *args])
    return result.exit_code, result.output


def test_worker_needs_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFT_BROKER_URL", raising=False)
    code, output = _run()
    assert code == 2 and "GRAFT_BROKER_URL is not set" in output


def test_worker_refuses_prefork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_BROKER_URL", "redis://127.0.0.1:6379/0")
    code, output = _run("--pool", "prefork")
    assert code == 2 and "--pool must be one of threads, solo" in output
