"""Notices to recipients over HTTP: compliance lists them (manual tasks, failed webhooks, missing
acknowledgements) and closes them with a note; a recipient lists and acknowledges its own; and
anyone who may read a request asks who received the person's data (Art. 19, second sentence)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from services.intake import notices, scope, store
from services.intake.auth import Caller, Role, caller_of, guarded, require
from services.intake.models import ErrorBody, FreeText
from shared.contracts.notices import NoticeCategory
from shared.contracts.report import Report
from shared.crypto import IdentifierSealError
from shared.recipients.plan import Planner
from shared.recipients.register import Manual, RegisterFile

router = APIRouter(prefix="/v1", tags=["recipients"])


class NoticeView(BaseModel):
    id: UUID
    request_id: str
    recipient_id: str
    recipient_name: str | None
    channel: str
    contact: str | None = Field(description="Manual recipients: who compliance tells, and how")
    type: str
    categories: list[NoticeCategory]
    identifiers: dict[str, list[str]] | None = Field(
        description="Compliance only, while it may have to tell the recipient itself"
    )
    must_acknowledge: bool
    acknowledge_by: datetime | None
    overdue: bool = Field(description="A required acknowledgement is missing past acknowledge_by")
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_via: str | None
    note: str | None
    created_at: datetime


class Close(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: FreeText = Field(description="How the recipient was told; kept here")


def _register(request: Request) -> RegisterFile:
    register: RegisterFile = request.app.state.register
    return register


def view(request: Request, row: asyncpg.Record, now: datetime) -> NoticeView:
    recipient = _register(request).get(row["recipient_id"])
    caller = caller_of(request)
    shown = None
    if caller.role is not Role.RECIPIENT and row["sealed_identifiers"]:
        opened = request.app.state.ctx.seal.open(row["sealed_identifiers"])
        shown = {k: v for k, v in opened.model_dump().items() if v}
    return NoticeView(
        id=row["notice_id"],
        request_id=row["request_id"],
        recipient_id=row["recipient_id"],
        recipient_name=recipient.name if recipient else None,
        channel=row["channel"],
        contact=recipient.notify.contact if recipient and isinstance(recipient.notify, Manual) else None,
        type=row["request_type"],
        categories=[NoticeCategory.model_validate(c) for c in json.loads(row["categories"])],
        identifiers=shown,
        must_acknowledge=row["must_acknowledge"],
        acknowledge_by=row["acknowledge_by"],
        overdue=row["state"] != "acknowledged"
        and row["acknowledge_by"] is not None
        and now > row["acknowledge_by"],
        state=row["state"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        acknowledged_at=row["acknowledged_at"],
        acknowledged_via=row["acknowledged_via"],
        note=_note(request, row) if caller.role is not Role.RECIPIENT else None,
        created_at=row["created_at"],
    )


def _note(request: Request, row: asyncpg.Record) -> str | None:
    """Compliance's note, sealed like identifiers (it may name the person or their contact)."""
    if not row["note"]:
        return None
    try:
        note: str = request.app.state.ctx.seal.open_text(row["note"])
    except IdentifierSealError:
        return None  # sealed with a key no longer held: its digest stands in the audit
    return note


def _own(caller: Caller) -> str | None:
    """A recipient sees its own notices only (a recipient token naming none sees nothing)."""
    return (caller.recipient_id or "") if caller.role is Role.RECIPIENT else None


@router.get("/notices", response_model=list[NoticeView], **guarded(Role.COMPLIANCE, Role.RECIPIENT))
async def list_notices(
    request: Request,
    state: Literal["pending", "delivered", "acknowledged", "failed"] | None = None,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
    recipient_id: Annotated[str | None, Query(max_length=64)] = None,
    overdue: Annotated[
        bool, Query(description="Only required acknowledgements missing past their time")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[NoticeView]:
    now = datetime.now(UTC)
    own = _own(caller_of(request))
    rows = await notices.search(
        request.app.state.ctx.pool,
        recipient_id=own if own is not None else recipient_id,
        request_id=request_id,
        state=state,
        overdue_at=now if overdue else None,
        limit=limit,
        offset=offset,
    )
    return [view(request, r, now) for r in rows]


@router.post(
    "/notices/{notice_id}/ack",
    response_model=NoticeView,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
    # Only the recipient's own token: an acknowledgement is its word, which no one (not even an
    # admin) may give for it; compliance closes a notice instead, under its own name.
    **guarded(Role.RECIPIENT, admin=False),
)
async def acknowledge(notice_id: UUID, request: Request) -> NoticeView:
    """The recipient acknowledges a notice it was sent; again changes nothing (and reports it
    again). 409 for a notice not sent yet or given up."""
    now = datetime.now(UTC)
    caller = caller_of(request)
    try:
        row = await notices.acknowledge(
            request.app.state.ctx.pool, notice_id, caller.recipient_id or "", caller.token_id, now
        )
    except notices.NotAcknowledgeable as exc:
        raise HTTPException(409, str(exc)) from None
    if row is None:
        raise HTTPException(404, "notice_id: no such notice")
    return view(request, row, now)


@router.post(
    "/notices/{notice_id}/close",
    response_model=NoticeView,
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    openapi_extra={"x-roles": sorted({Role.COMPLIANCE.value, Role.ADMIN.value})},
)
async def close(
    notice_id: UUID,
    body: Close,
    request: Request,
    caller: Caller = Depends(require(Role.COMPLIANCE)),  # noqa: B008
) -> NoticeView:
    """Compliance told the recipient (a manual task, a failed webhook) or has its acknowledgement.
    Closing one already acknowledged keeps the first evidence (and reports it again)."""
    now = datetime.now(UTC)
    ctx = request.app.state.ctx
    row = await notices.close(ctx.pool, notice_id, body.note, caller.token_id, now, ctx.seal)
    if row is None:
        raise HTTPException(404, "notice_id: no such notice")
    return view(request, row, now)


class Disclosure(BaseModel):
    recipient_id: str
    name: str
    role: str
    categories: list[str] = Field(description="system/category of the person's data it received")
    notice_state: str | None = Field(description="What became of this request's notice to it, if any")
    acknowledged_at: datetime | None


class RecipientsView(BaseModel):
    request_id: str
    register_version: str
    recipients: list[Disclosure]


@router.get(
    "/requests/{request_id}/recipients",
    response_model=RecipientsView,
    responses={404: {"model": ErrorBody}},
    **guarded(Role.SUBMITTER, Role.COMPLIANCE),
)
async def recipients_of(request_id: str, request: Request) -> RecipientsView:
    """Who the person's data was disclosed to: the register's recipients of every category where
    the request found their records, with what became of the notice to each."""
    row = await store.get(
        request.app.state.ctx.pool, request_id, submitted_by=scope.readable_by(caller_of(request))
    )
    if row is None:
        raise HTTPException(404, "request_id: no such request")
    if row["report"] is None:
        raise HTTPException(404, "report: not yet available; the tracker has not seen the request")
    report = Report.model_validate_json(row["report"])
    found = [(s.system, c.category) for s in report.systems for c in s.categories if c.found]
    told = {n.recipient_id: n for n in report.recipients}
    register = _register(request)
    return RecipientsView(
        request_id=request_id,
        register_version=register.version,
        recipients=[
            Disclosure(
                recipient_id=r.id,
                name=r.name,
                role=r.role.value,
                categories=[f"{s}/{c}" for s, c in shared],
                notice_state=told[r.id].state.value if r.id in told else None,
                acknowledged_at=told[r.id].acknowledged_at if r.id in told else None,
            )
            for r, shared in Planner(register).disclosed_to(found)
        ],
    )
