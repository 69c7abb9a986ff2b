"""Token routes (admin scope): create (the raw value is shown once), list, revoke."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.auth import repository, service
from app.deps import AdminAuth, SessionDep
from app.errors import NotFound
from app.models import ApiToken
from app.ops.metrics import MetricsRoute

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], route_class=MetricsRoute)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    scope: Literal["read", "write", "admin"] = "read"
    ttl_days: float | None = Field(default=None, gt=0, le=3650)


class TokenRead(BaseModel):
    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @field_validator("created_at", "expires_at", "revoked_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # SQLite hands back naive datetimes; they are UTC, and the schema's date-time wants an offset.
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class TokenCreated(TokenRead):
    token: str = Field(description="The raw token: shown this once, never stored.")


def _read(token: ApiToken) -> dict:
    return TokenRead.model_validate(token, from_attributes=True).model_dump()


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, session: SessionDep, _: AdminAuth) -> TokenCreated:
    """Create a token with a scope (admin ⊇ write ⊇ read); its raw value is returned only here."""
    token, raw = service.create_token(session, name=body.name, scopes=[body.scope], ttl_days=body.ttl_days)
    session.commit()
    return TokenCreated(**_read(token), token=raw)


@router.get("", response_model=list[TokenRead])
def list_tokens(session: SessionDep, _: AdminAuth) -> list[TokenRead]:
    """Every token (hashes and raw values are never returned)."""
    return [TokenRead(**_read(t)) for t in repository.list_all(session)]


@router.delete("/{token_id}", response_model=TokenRead)
def revoke_token(
    session: SessionDep, _: AdminAuth, token_id: int = Path(ge=1, le=2**31 - 1, description="A token id.")
) -> TokenRead:
    """Revoke a token: it stops working at once."""
    token = repository.get(session, token_id)
    if token is None:
        raise NotFound(f"No token has id {token_id}; list tokens with GET /v1/tokens.")
    if token.revoked_at is None:
        repository.revoke(session, token, datetime.now(UTC))
    session.commit()
    return TokenRead(**_read(token))
