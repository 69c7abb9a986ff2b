"""Engine and session factory; the same sync pattern in the API, the workers and the CLI."""

from __future__ import annotations

import time

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.dispatch import attach_job_buffer

# A pooled connection unused for this long is pinged before it is handed out (see `_ping_if_idle`).
IDLE_PING_S = 10.0
# Connections older than this are replaced (server-side idle timeouts, load balancers dropping them).
RECYCLE_S = 1800


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets foreign keys, WAL and a generous busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    # LIFO: a steady load keeps reusing the same few connections, so they stay warm and never idle.
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_recycle=RECYCLE_S, pool_use_lifo=True)
    _ping_if_idle(engine)
    return engine


def _ping_if_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only if it sat idle, instead of `pool_pre_ping` on every one.

    `pool_pre_ping` costs a round trip on every request. A connection in steady use has just proved
    itself, and if the server restarts under load the first failed query invalidates the whole pool
    (SQLAlchemy's disconnect handling), so one in-flight request answers 503 and the next reconnects.
    An idle pool, the case pre-ping is for (the database restarted overnight), is still pinged.
    """

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn, record) -> None:  # noqa: ANN001
        record.info["graft_checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        since = record.info.get("graft_checked_in")
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return  # brand new, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as error:
            # The pool disposes of this connection and hands out a fresh one instead.
            raise exc.DisconnectionError(f"stale pooled connection: {error}") from error


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that never expire on commit (entities are read after the request commits)."""
    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    attach_job_buffer(factory)
    return factory


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for requests that only read (GET): each statement runs on its own, no transaction.

    A read-only request in a transaction pays two extra round trips (BEGIN, then ROLLBACK when the
    session closes) for nothing: at PostgreSQL's READ COMMITTED every statement takes its own snapshot
    anyway, so autocommit reads see exactly what they would inside the transaction. Same pool.
    """
    return sessionmaker(
        bind=engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False, autoflush=False
    )
