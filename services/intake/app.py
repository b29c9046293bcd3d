"""Intake's HTTP application: the routers, the error shapes, the limits, and what is published
about the API. The OpenAPI document needs a token (of any role); the interactive /docs and
/redoc exist only on a development stack; metrics are not here at all but on
LETHE_METRICS_PORT, as for every service (shared/service.py), so the public port serves the
API and nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.intake import admin_api, api, holds_api, login, notices_api, reviews_api
from services.intake.admission import Admission, AdmissionLimits, Load
from services.intake.auth import Role, require
from services.intake.limits import BodySizeLimit, RateLimiter
from shared.codec import describe_error
from shared.recipients.register import EMPTY

DESCRIPTION = (
    "GDPR erasure and restriction requests across a company's systems. Every /v1 call needs a bearer"
    " token; each operation lists the roles allowed in `x-roles`."
)


@dataclass(frozen=True)
class ApiLimits:
    stuck_after_s: float = 3600
    rate_per_s: float = 50
    burst: int = 200
    max_body_bytes: int = 64 * 1024
    failures_per_s: float = 0.5
    failure_burst: int = 30
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)


Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field, never what was sent: neither a value nor an unknown key (either
    may be an e-mail address)."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        loc = [p for p in e["loc"] if p != "body"]
        field, message = describe_error(loc, e["type"], e["msg"], e.get("input"))
        errors.append({"field": "(body)" if field == "(message)" else field, "message": message})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": summary, "errors": errors})


async def _unstorable(request: Request, exc: Exception) -> Response:
    """A value PostgreSQL cannot hold (a NUL) that no model refused first, in a path or a query:
    the caller's mistake, not a server error. Which value is not known here; none is repeated."""
    return JSONResponse(
        {"detail": "(request): a value holds a character that cannot be stored (NUL)"}, status_code=422
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """A person's browser without a token goes to the sign-in page; API clients get JSON."""
    assert isinstance(exc, StarletteHTTPException)
    wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
    if exc.status_code == 401 and wants_page:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _publish_description(app: FastAPI, development: bool) -> None:
    """/openapi.json for any valid token (it maps every route: no map for strangers); the
    pages that render it, which load their scripts from a CDN, only for development."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require(*Role))])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    if not development:
        return

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Lethe API")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="Lethe API")


def create_app(lifespan: Lifespan | None, limits: ApiLimits, development: bool = False) -> FastAPI:
    app = FastAPI(
        title="Lethe",
        version="1",
        lifespan=lifespan,
        description=DESCRIPTION,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.stuck_after_s = limits.stuck_after_s
    app.state.development = development  # cookies without Secure, /docs and /redoc
    app.state.register = EMPTY  # the register of recipients; the service's lifespan sets its own
    app.state.rate_limiter = RateLimiter(limits.rate_per_s, limits.burst)
    app.state.auth_failures = RateLimiter(limits.failures_per_s, limits.failure_burst)
    for router in (
        api.router,
        holds_api.router,
        reviews_api.router,
        reviews_api.pages,
        admin_api.router,
        notices_api.router,
        api.pages_router,
        login.pages,
    ):
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for refused in (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError):
        app.add_exception_handler(refused, _unstorable)
    # Admission inside the body limit (which caps the body it reads), before authentication.
    app.add_middleware(Admission, limits=limits.admission, load=Load())
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    _publish_description(app, development)

    # One server span per request; the ASGI receive/send sub-spans (three more per request)
    # say nothing the server span does not, and cost their share of intake's CPU.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"])

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        """Ready: what is missing, if anything (database, broker)."""
        checks = await request.app.state.readiness() if hasattr(request.app.state, "readiness") else {}
        ready = all(checks.values()) and bool(checks)
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app
