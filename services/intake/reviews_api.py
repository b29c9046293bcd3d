"""HTTP endpoints for compliance: the records that may be someone else's, and the decisions on
them (GDPR Art. 17 asks for the subject's data erased, and only theirs)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.intake import reviews
from services.intake.auth import Caller, Role, guarded, require
from services.intake.models import ErrorBody, FreeText
from services.intake.pages import TEMPLATES
from shared.codec import describe_validation_error
from shared.contracts.report import ReviewDecision, ReviewState

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])
pages = APIRouter(include_in_schema=False)
REASONS = {
    "shared_phone": "found only by a phone number the request gave; the record names someone else",
    "learnt_phone": "found only by a phone number learnt from another record, not given by the request",
    "phone_only": "found only by a phone number the request gave, and nothing else on it says whose it is",
    "unreadable_identifier": "the search found it by an identifier written so that it cannot be read"
    " (two numbers or addresses in one field, a customer id with a space inside)",
    "mailbox_variant": "the address is another sub-address of the subject's (name+tag@)",
    "id_variant": "the customer id is the subject's written in another case (c-1002 for C-1002)",
    "too_many_matches": "one identifier found more records than one person plausibly has",
    "expansion_bound": "the search stopped at its bound with identifiers learnt and not searched",
}


class ReviewView(BaseModel):
    id: UUID
    request_id: str
    system: str | None
    reason: str
    explanation: str
    records: dict[str, int] = Field(description="Records per category awaiting the decision")
    matched: list[str] = Field(description="What found them, masked")
    conflicting: list[str] = Field(description="Identifiers on them the subject is not known by, masked")
    round: int
    state: str
    opened_at: datetime
    decision: str | None
    decision_reason: str | None
    decided_by: str | None
    decided_role: str | None
    decided_at: datetime | None


class Decide(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: ReviewDecision = Field(description="erase: they are the subject's; keep: leave them")
    reason: FreeText = Field(description="Why; kept in intake, its digest audited")


def view(request: Request, row: asyncpg.Record) -> ReviewView:
    shown = reviews.evidence(request.app.state.ctx.seal, row["evidence"])
    return ReviewView(
        id=row["review_id"],
        request_id=row["request_id"],
        system=row["system"],
        reason=row["reason"],
        explanation=REASONS.get(row["reason"], row["reason"]),
        records=dict(json.loads(row["records"])),
        matched=shown.matched if shown else list(row["matched"]),
        conflicting=shown.conflicting if shown else list(row["conflicting"]),
        round=row["round"],
        state=row["state"],
        opened_at=row["opened_at"],
        decision=row["decision"],
        decision_reason=row["decision_reason"],
        decided_by=row["decided_by"],
        decided_role=row["decided_role"],
        decided_at=row["decided_at"],
    )


@router.get("", response_model=list[ReviewView], **guarded(Role.COMPLIANCE))
async def list_reviews(
    request: Request,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
    state: Annotated[ReviewState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[ReviewView]:
    rows = await reviews.search(request.app.state.ctx.pool, request_id, state, limit, offset)
    return [view(request, r) for r in rows]


@router.post(
    "/{review_id}",
    status_code=202,
    response_model=ReviewView,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    openapi_extra={"x-roles": sorted({Role.COMPLIANCE.value, Role.ADMIN.value})},
)
async def decide(
    review_id: UUID,
    body: Decide,
    request: Request,
    caller: Caller = Depends(require(Role.COMPLIANCE)),  # noqa: B008
) -> ReviewView:
    """202: recorded, and carried out by the system ('erase') or the tracker ('keep')."""
    try:
        row = await reviews.decide(
            request.app.state.ctx.pool,
            review_id,
            body.decision,
            body.reason,
            caller.token_id,
            caller.role.value,
        )
    except reviews.NotDecidable as exc:
        raise HTTPException(409, str(exc)) from None
    if row is None:
        raise HTTPException(404, "review_id: no such review")
    return view(request, row)


@pages.get("/reviews", response_class=HTMLResponse, **guarded(Role.COMPLIANCE))
async def reviews_page(request: Request, message: str | None = None, error: bool = False) -> str:
    pool = request.app.state.ctx.pool
    open_items = [view(request, r) for r in await reviews.search(pool, None, "open", 200, 0)]
    decided = [view(request, r) for r in await reviews.decided(pool, 50)]
    return TEMPLATES.get_template("reviews.html").render(
        open=[r for r in open_items if r.decision is None], decided=decided, message=message, error=error
    )


@pages.post("/reviews/{review_id}")
async def decide_from_page(
    review_id: UUID,
    request: Request,
    decision: Annotated[str, Form()],
    reason: Annotated[str, Form()],
    caller: Caller = Depends(require(Role.COMPLIANCE)),  # noqa: B008
) -> RedirectResponse:
    """The page's form: the same rules as the API, the answer shown on the page."""
    try:
        body = Decide.model_validate({"decision": decision, "reason": reason})
        row = await reviews.decide(
            request.app.state.ctx.pool,
            review_id,
            body.decision,
            body.reason,
            caller.token_id,
            caller.role.value,
        )
        message, error = ("decided" if row else "no such review"), row is None
    except ValidationError as exc:
        field, problem = describe_validation_error(exc)
        message, error = f"{field}: {problem}", True
    except reviews.NotDecidable as exc:
        message, error = str(exc), True
    return RedirectResponse(f"/reviews?{urlencode({'message': message, 'error': error})}", status_code=303)
