"""Bearer tokens: created once (shown once), stored as sha256, checked with hierarchical scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from app.auth import repository
from app.errors import BadRequest, Forbidden, Unauthorized
from app.models import ApiToken

SCOPES = ("read", "write", "admin")
TOKEN_PREFIX = "graft_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a stored token's id (None for the bootstrap token) and its scopes."""

    token_id: int | None
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def expand_scopes(scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Scopes are hierarchical: admin implies write, write implies read."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise BadRequest(f"Unknown scope(s) {sorted(unknown)}; use read, write or admin.")
    level = max((SCOPES.index(s) for s in scopes), default=0)
    return frozenset(SCOPES[: level + 1])


def create_token(
    session: Session, *, name: str, scopes: list[str], ttl_days: float | None = None
) -> tuple[ApiToken, str]:
    """Create a token; the raw value is returned once and never stored."""
    expanded = expand_scopes(scopes)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(days=ttl_days) if ttl_days else None
    token = repository.create(
        session, name=name, token_hash=hash_token(raw), scopes=sorted(expanded, key=SCOPES.index),
        expires_at=expires,
    )
    return token, raw


def authenticate(session: Session, raw: str | None, *, bootstrap: str | None) -> Principal:
    """The principal behind `raw`, or Unauthorized."""
    if not raw:
        raise Unauthorized("Missing bearer token; send `Authorization: Bearer <token>`.")
    if bootstrap and hmac.compare_digest(raw.encode(), bootstrap.encode()):
        return Principal(token_id=None, scopes=frozenset(SCOPES))
    token = repository.get_by_hash(session, hash_token(raw))
    now = datetime.now(UTC)
    if token is None or token.revoked_at is not None:
        raise Unauthorized(
            "Invalid or revoked token. Send a token this server issued (an admin creates one with "
            "`GRAFT_TOKEN=<admin token> graft token create --server <this server>`) or, on a fresh install, "
            "the server's GRAFT_BOOTSTRAP_TOKEN."
        )
    expires = token.expires_at
    if expires is not None and (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) <= now:
        raise Unauthorized(
            "This token has expired; an admin creates a new one with "
            "`GRAFT_TOKEN=<admin token> graft token create --server <this server>`."
        )
    return Principal(token_id=token.id, scopes=expand_scopes(token.scopes))


def require_scope(principal: Principal, scope: str) -> None:
    """Raise Forbidden unless `principal` holds `scope`."""
    if scope not in principal.scopes:
        raise Forbidden(f"This token lacks the `{scope}` scope needed for this request.")
