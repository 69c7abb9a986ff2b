"""Two jobs creating the same new result module at once: the loser uses the winner's module, its job lives.

Found by the load run (bench/load.py): two workers finishing jobs into one new `result_module` raced to
create it, and the loser's job failed with "A module called ... already exists".
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import select, text

from app.config import Settings
from app.main import create_app
from app.models import Module
from app.modules.service import get_or_create_module


def _wait_until_blocked(sessionmaker, pid: int, timeout: float = 20.0) -> None:
    """Until backend `pid` waits on a lock (its insert queued behind the other's uncommitted row)."""
    deadline = time.monotonic() + timeout
    with sessionmaker() as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.scalar(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
            watcher.rollback()
            if waiting == "Lock":
                return
            time.sleep(0.05)
    raise AssertionError("the second insert never waited on the first")


def test_losing_creator_gets_the_winners_module(pg_database: str, tmp_path) -> None:
    app = create_app(Settings(data_dir=tmp_path, database_url=pg_database))  # runs the migrations
    sessionmaker = app.state.sessionmaker
    fields = {"name": "race-adapter", "kind": "adapter", "category": "c", "task": "t"}
    with sessionmaker() as winner, sessionmaker() as loser:
        won = get_or_create_module(winner, **fields)  # inserted, not committed yet
        loser_pid = loser.scalar(text("SELECT pg_backend_pid()"))
        got: dict = {}

        def lose() -> None:
            try:
                got["module"] = get_or_create_module(loser, **fields)
                got["id"] = got["module"].id
                # The loser's transaction is still usable: it can go on and commit its own work.
                loser.execute(text("SELECT 1"))
                loser.commit()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                got["error"] = exc

        thread = threading.Thread(target=lose)
        thread.start()
        _wait_until_blocked(sessionmaker, loser_pid)
        winner.commit()
        thread.join(30)
        assert "error" not in got, got.get("error")
        assert got["id"] == won.id
    with sessionmaker() as session:
        assert session.scalars(select(Module).where(Module.name == "race-adapter")).all() == [
            session.get(Module, won.id)
        ]
    app.state.engine.dispose()
