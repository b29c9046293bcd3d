"""The HTTP API. Handlers are thin: validate, call the service layer or store, shape the answer."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from services.intake import export, notices, operations, pages, scope, store
from services.intake.auth import Role, caller_of, guarded
from services.intake.models import ErrorBody, FreeText, RequestView, SubmitRequest
from services.intake.service import IntakeContext, Unacceptable, accept
from shared.contracts import RequestStatus, SystemProgress
from shared.contracts.audit import AuditEntry, verify_chain

router = APIRouter(prefix="/v1")
pages_router = APIRouter(include_in_schema=False)


def _ctx(request: Request) -> IntakeContext:
    ctx: IntakeContext = request.app.state.ctx
    return ctx


def _view(row: asyncpg.Record) -> RequestView:
    completed = row["completed_at"]
    return RequestView(
        request_id=row["request_id"],
        type=row["request_type"],
        status=row["status"],
        subject_ref=row["subject_ref"],
        systems=list(row["systems"]),
        received_at=row["received_at"],
        deadline=row["deadline"],
        overdue=(completed or datetime.now(UTC)) > row["deadline"],
        progress=[SystemProgress.model_validate(p) for p in json.loads(row["progress"])],
        completed_at=completed,
        trace_id=row["trace_id"],
        extension_months=row["extension_months"],
    )


async def _row(request: Request, request_id: str) -> asyncpg.Record:
    """The request if the caller may read it; another submitter's is 404 exactly like a missing
    one, so a submitter cannot even learn which ids others used."""
    readable_by = scope.readable_by(caller_of(request))
    row = await store.get(_ctx(request).pool, request_id, submitted_by=readable_by)
    if row is None:
        raise HTTPException(404, "request_id: no such request")
    return row


@router.post(
    "/requests",
    status_code=202,
    response_model=RequestView,
    responses={409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    **guarded(Role.SUBMITTER),
)
async def submit_request(body: SubmitRequest, request: Request) -> RequestView:
    try:
        return _view(await accept(_ctx(request), body, scope.submitter(caller_of(request))))
    except Unacceptable as exc:
        raise HTTPException(422, str(exc)) from None
    except store.Conflict:
        # One answer whether the id is another submitter's or this one's with another body, and
        # whatever that body was: it must not confirm a guess at it.
        raise HTTPException(409, "request_id: already used for a different request") from None


@router.get(
    "/requests/{request_id}",
    response_model=RequestView,
    responses={404: {"model": ErrorBody}},
    **guarded(Role.SUBMITTER, Role.COMPLIANCE),
)
async def get_request(request_id: str, request: Request) -> RequestView:
    return _view(await _row(request, request_id))


@router.get("/requests", response_model=list[RequestView], **guarded(Role.SUBMITTER, Role.COMPLIANCE))
async def list_requests(
    request: Request,
    status: RequestStatus | None = None,
    overdue: bool | None = None,
    stuck: Annotated[
        bool, Query(description="Only requests not final and unchanged for LETHE_STUCK_AFTER_S")
    ] = False,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[RequestView]:
    stuck_before = datetime.now(UTC) - timedelta(seconds=request.app.state.stuck_after_s) if stuck else None
    rows = await store.search(
        _ctx(request).pool,
        submitted_by=scope.readable_by(caller_of(request)),
        status=status,
        overdue=overdue,
        received_from=received_from,
        received_to=received_to,
        limit=limit,
        offset=offset,
        stuck_before=stuck_before,
    )
    return [_view(r) for r in rows]


@router.get(
    "/requests/{request_id}/report",
    responses={404: {"model": ErrorBody}},
    description="The report as JSON, or as an HTML page for `Accept: text/html`.",
    **guarded(Role.SUBMITTER, Role.COMPLIANCE),
)
async def get_report(request_id: str, request: Request) -> Response:
    row = await _row(request, request_id)
    if row["report"] is None:
        raise HTTPException(404, "report: not yet available; the tracker has not seen the request")
    report: dict[str, Any] = json.loads(row["report"])
    accept_header = request.headers.get("accept", "")
    if "text/html" in accept_header and "application/json" not in accept_header:
        return HTMLResponse(pages.report_html(report))
    return JSONResponse(report)


class AuditView(BaseModel):
    request_id: str
    entries: list[AuditEntry]
    chain_valid: bool
    first_broken_seq: int | None


@router.get(
    "/requests/{request_id}/audit",
    response_model=AuditView,
    responses={404: {"model": ErrorBody}},
    **guarded(Role.SUBMITTER, Role.COMPLIANCE),
)
async def get_audit(request_id: str, request: Request) -> AuditView:
    row = await _row(request, request_id)
    entries = [AuditEntry.model_validate(e) for e in json.loads(row["audit"])]
    broken = verify_chain(entries)
    return AuditView(
        request_id=request_id, entries=entries, chain_valid=broken is None, first_broken_seq=broken
    )


class ExtensionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    months: int = Field(ge=1, le=2, description="1 or 2: at most two further months (Art. 12(3)).")
    reason: FreeText = Field(description="Why; upstream tells the person.")


@router.post(
    "/requests/{request_id}/extension",
    response_model=RequestView,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    **guarded(Role.COMPLIANCE),
)
async def extend_deadline(request_id: str, body: ExtensionBody, request: Request) -> RequestView:
    try:
        row = await operations.extend(
            _ctx(request).pool, request_id, body.months, body.reason, datetime.now(UTC)
        )
    except operations.NotFound:
        raise HTTPException(404, "request_id: no such request") from None
    except operations.Refused as exc:
        raise HTTPException(409, str(exc)) from None
    return _view(row)


@router.post(
    "/requests/{request_id}/systems/{system}/retry",
    status_code=202,
    responses={404: {"model": ErrorBody}},
    **guarded(Role.COMPLIANCE),
)
async def retry_system(request_id: str, system: str, request: Request) -> dict[str, str]:
    """Ask the tracker to try a failed system again; it ignores systems that have not failed."""
    try:
        await operations.request_retry(_ctx(request).pool, request_id, system)
    except operations.NotFound as exc:
        raise HTTPException(
            404, str(exc) if "system" in str(exc) else "request_id: no such request"
        ) from None
    return {"request_id": request_id, "system": system, "retry": "requested"}


# An HTML form sends an empty field as "": that means no bound, not a bad date.
OptionalDay = Annotated[date | None, BeforeValidator(lambda value: value or None)]


@router.get(
    "/exports/requests.csv",
    response_class=PlainTextResponse,
    description="Every request received in the period, streamed in batches.",
    **guarded(Role.COMPLIANCE),
)
async def export_csv(
    request: Request, received_from: OptionalDay = None, received_to: OptionalDay = None
) -> Response:
    start, end = pages.period(received_from, received_to)
    return StreamingResponse(
        export.requests_csv(_ctx(request).pool, start, end, datetime.now(UTC)),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="lethe-requests.csv"'},
    )


@pages_router.get("/dashboard", response_class=HTMLResponse, **guarded(Role.COMPLIANCE))
async def dashboard(
    request: Request,
    received_from: OptionalDay = None,
    received_to: OptionalDay = None,
    page: Annotated[int, Query(ge=1, le=400_000)] = 1,
) -> str:
    start, end = pages.period(received_from, received_to)
    view = await pages.dashboard(_ctx(request).pool, start, end, datetime.now(UTC), page)
    waiting = await _ctx(request).pool.fetchval("SELECT count(*) FROM reviews WHERE state = 'open'")
    told = await notices.attention(_ctx(request).pool, datetime.now(UTC))
    return pages.dashboard_html(view, received_from, received_to, waiting, told)
