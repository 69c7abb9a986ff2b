"""FastAPI dependencies as typed aliases: the session, settings, store and the caller's scopes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.auth.service import Principal, authenticate, require_scope
from app.config import Settings
from app.storage import ArtifactStore


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request; the route commits once at its end, anything uncommitted is rolled back."""
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_db)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _principal(request: Request, scope: str) -> Principal:
    settings: Settings = request.app.state.settings
    if settings.auth_disabled:
        return Principal(token_id=None, scopes=frozenset(("read", "write", "admin")))
    # A short-lived session of its own: auth must not share the route's transaction.
    with request.app.state.sessionmaker() as session:
        principal = authenticate(session, _bearer(request), bootstrap=settings.bootstrap_token)
    require_scope(principal, scope)
    request.state.principal = principal
    return principal


def require_read(request: Request) -> Principal:
    return _principal(request, "read")


def require_write(request: Request) -> Principal:
    return _principal(request, "write")


def require_admin(request: Request) -> Principal:
    return _principal(request, "admin")


ReadAuth = Annotated[Principal, Depends(require_read)]
WriteAuth = Annotated[Principal, Depends(require_write)]
AdminAuth = Annotated[Principal, Depends(require_admin)]
