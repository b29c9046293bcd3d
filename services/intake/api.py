"""The HTTP API. Handlers are thin: validate, call the store, shape the answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace

from services.intake import holds_api, store
from services.intake.models import ErrorBody, RequestView, SubmitRequest
from shared.contracts import RequestStatus, SystemProgress
from shared.crypto import IdentifierSeal, subject_ref
from shared.deadlines import add_months

router = APIRouter(prefix="/v1")


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _view(row: asyncpg.Record) -> RequestView:
    now = datetime.now(UTC)
    completed = row["completed_at"]
    return RequestView(
        request_id=row["request_id"],
        type=row["request_type"],
        status=row["status"],
        subject_ref=row["subject_ref"],
        systems=list(row["systems"]),
        received_at=row["received_at"],
        deadline=row["deadline"],
        overdue=(completed or now) > row["deadline"],
        progress=[SystemProgress.model_validate(p) for p in json.loads(row["progress"])],
        completed_at=completed,
        trace_id=row["trace_id"],
    )


@router.post(
    "/requests",
    status_code=202,
    response_model=RequestView,
    responses={409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def submit_request(body: SubmitRequest, request: Request) -> RequestView:
    app_state = request.app.state
    unknown = sorted(set(body.systems or ()) - set(app_state.systems))
    if unknown:
        raise HTTPException(422, f"systems: unknown system(s) {', '.join(unknown)}")
    received_at = body.received_at or datetime.now(UTC)
    identities = body.subject.identities()
    span = trace.get_current_span().get_span_context()
    new = store.NewRequest(
        request_id=body.request_id,
        fingerprint=body.fingerprint(),
        request_type=body.type.value,
        subject_ref=subject_ref(app_state.pseudonym_key, identities),
        sealed_identifiers=app_state.seal.seal(identities),
        systems=body.systems or list(app_state.systems),
        received_at=received_at,
        deadline=add_months(received_at, 1),
        trace_id=format(span.trace_id, "032x") if span.is_valid else None,
    )
    try:
        row = await store.submit(_pool(request), new)
    except store.Conflict:
        raise HTTPException(409, "request_id: already used for a different request") from None
    return _view(row)


@router.get("/requests/{request_id}", response_model=RequestView, responses={404: {"model": ErrorBody}})
async def get_request(request_id: str, request: Request) -> RequestView:
    row = await store.get(_pool(request), request_id)
    if row is None:
        raise HTTPException(404, "request_id: no such request")
    return _view(row)


@router.get("/requests", response_model=list[RequestView])
async def list_requests(
    request: Request,
    status: RequestStatus | None = None,
    overdue: bool | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[RequestView]:
    rows = await store.search(
        _pool(request),
        status=status,
        overdue=overdue,
        received_from=received_from,
        received_to=received_to,
        limit=limit,
        offset=offset,
    )
    return [_view(r) for r in rows]


@router.get("/requests/{request_id}/report", responses={404: {"model": ErrorBody}})
async def get_report(request_id: str, request: Request) -> dict[str, Any]:
    """The completion report as the tracker last built it (partial while in progress)."""
    row = await store.get(_pool(request), request_id)
    if row is None:
        raise HTTPException(404, "request_id: no such request")
    if row["report"] is None:
        raise HTTPException(404, "report: not yet available; the tracker has not seen the request")
    report: dict[str, Any] = json.loads(row["report"])
    return report


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field; the offending input is not echoed (it may be an e-mail)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": summary, "errors": errors})


def create_app(lifespan: Any, *, systems: list[str], seal: IdentifierSeal, pseudonym_key: str) -> FastAPI:
    app = FastAPI(
        title="Lethe",
        version="1",
        lifespan=lifespan,
        description="GDPR erasure and restriction requests across a company's systems.",
    )
    app.state.systems = systems
    app.state.seal = seal
    app.state.pseudonym_key = pseudonym_key
    app.include_router(router)
    app.include_router(holds_api.router)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
