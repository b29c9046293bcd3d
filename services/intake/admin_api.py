"""Administration: API tokens (the sign-in page that carries one as a cookie is login.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from services.intake import auth
from services.intake.auth import Role, guarded
from services.intake.models import ErrorBody

router = APIRouter(prefix="/v1/tokens", tags=["admin"])


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    label: str = Field("", max_length=200, description="Who or what the token is for.")
    recipient_id: str | None = Field(
        None, max_length=64, description="With role recipient: the register's recipient it acts for."
    )


class CreatedToken(BaseModel):
    token: str = Field(description="Shown once; only its hash is stored.")
    role: Role


class TokenView(BaseModel):
    """A token as listed: never its secret (only its hash is kept anyway)."""

    id: str
    role: Role
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _view(row: asyncpg.Record) -> TokenView:
    return TokenView(
        id=row["token_id"],
        role=Role(row["role"]),
        label=row["label"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


@router.post(
    "", status_code=201, response_model=CreatedToken, responses={422: {"model": ErrorBody}}, **guarded()
)
async def create_token(body: NewToken, request: Request) -> CreatedToken:
    register = request.app.state.register
    if (body.role is Role.RECIPIENT) != (body.recipient_id is not None):
        raise HTTPException(422, "recipient_id: required with role recipient, and only with it")
    if body.recipient_id is not None and register.get(body.recipient_id) is None:
        raise HTTPException(422, "recipient_id: not in the register of recipients")
    token = await auth.create(
        request.app.state.ctx.pool, body.role, body.label, recipient_id=body.recipient_id
    )
    return CreatedToken(token=token, role=body.role)


@router.get("", response_model=list[TokenView], **guarded())
async def list_tokens(request: Request) -> list[TokenView]:
    return [_view(r) for r in await auth.listing(request.app.state.ctx.pool)]


@router.delete("/{token_id}", response_model=TokenView, responses={404: {"model": ErrorBody}}, **guarded())
async def revoke_token(token_id: Annotated[str, Path(max_length=64)], request: Request) -> TokenView:
    """Revoked at once: the next call with it is refused (401). The row stays, with the time."""
    row = await auth.revoke(request.app.state.ctx.pool, token_id)
    if row is None:
        raise HTTPException(404, "token_id: no such token")
    return _view(row)
