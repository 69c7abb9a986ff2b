"""Queries on api_tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiToken


def create(
    session: Session, *, name: str, token_hash: str, scopes: list[str], expires_at: datetime | None
) -> ApiToken:
    token = ApiToken(name=name, token_hash=token_hash, scopes=scopes, expires_at=expires_at)
    session.add(token)
    session.flush()
    return token


def get(session: Session, token_id: int) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def get_by_hash(session: Session, token_hash: str) -> ApiToken | None:
    return session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash)).one_or_none()


def list_all(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke(session: Session, token: ApiToken, when: datetime) -> None:
    token.revoked_at = when
    session.flush()
