"""FastAPI dependencies as typed aliases: the session, settings, store and the caller's scopes.

FastAPI runs every plain `def` dependency in the thread pool: one thread hop each, on every request,
and each hop is a chance to wait for a core on a busy machine (where the read routes' p99 came from).
So the dependencies that do no I/O are `async def` and run on the event loop; the two that may block
(the token lookup, closing a session that holds a connection) hop to a thread only when they must.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth.service import SCOPES, Principal, authenticate, require_scope
from app.config import Settings
from app.storage import ArtifactStore

_EVERYTHING = Principal(token_id=None, scopes=frozenset(SCOPES))


async def get_settings_dep(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


_READS = frozenset(("GET", "HEAD"))


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One session per request; the route commits once at its end, anything uncommitted is rolled back.

    GET and HEAD requests, which never write, get an autocommit session (no BEGIN/ROLLBACK round trips).
    """
    state = request.app.state
    # Making a session does no I/O: it takes a pooled connection only at its first query.
    session = (state.read_sessionmaker if request.method in _READS else state.sessionmaker)()
    try:
        yield session
    finally:
        if session.in_transaction():  # a connection to roll back and return: that is I/O
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_store(request: Request) -> ArtifactStore:
    """The app's artifact store."""
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_db)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _lookup(request: Request, raw: str | None) -> Principal:
    settings: Settings = request.app.state.settings
    # A short-lived session of its own, outside the route's transaction; the lookup only reads.
    with request.app.state.read_sessionmaker() as session:
        return authenticate(session, raw, bootstrap=settings.bootstrap_token)


async def _principal(request: Request, scope: str) -> Principal:
    settings: Settings = request.app.state.settings
    raw = _bearer(request)
    bootstrap = settings.bootstrap_token
    if settings.auth_disabled:
        principal = _EVERYTHING
    elif not raw or (bootstrap and hmac.compare_digest(raw.encode(), bootstrap.encode())):
        # A missing token or the bootstrap one: `authenticate` decides these before any query.
        principal = authenticate(None, raw, bootstrap=bootstrap)  # type: ignore[arg-type]
    else:
        principal = await run_in_threadpool(_lookup, request, raw)
    require_scope(principal, scope)
    request.state.principal = principal
    return principal


async def require_read(request: Request) -> Principal:
    """The caller, who must hold the `read` scope."""
    return await _principal(request, "read")


async def require_write(request: Request) -> Principal:
    """The caller, who must hold the `write` scope."""
    return await _principal(request, "write")


async def require_admin(request: Request) -> Principal:
    """The caller, who must hold the `admin` scope."""
    return await _principal(request, "admin")


ReadAuth = Annotated[Principal, Depends(require_read)]
WriteAuth = Annotated[Principal, Depends(require_write)]
AdminAuth = Annotated[Principal, Depends(require_admin)]
