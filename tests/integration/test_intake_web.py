"""Intake's web surface, on the application itself over a real database (no broker needed):
sign-in that checks the token and resists cross-site posting, Secure cookies, failed
authentications throttled per address, no API map or metrics for strangers, 422s that repeat
nothing sent, and listings that stay bounded however many rows there are."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet

from services.intake import auth, holds, reviews, store
from services.intake.app import ApiLimits, create_app
from services.intake.service import IntakeContext
from shared.crypto import IdentifierSeal
from shared.db import apply_schema, create_pool, ensure_database
from shared.outbox import OUTBOX_DDL
from shared.topics import SYSTEMS

pytestmark = pytest.mark.integration
# A long time ago: nothing here depends on today's date (what is overdue stays overdue).
T0 = datetime(2020, 3, 2, 9, 0, tzinfo=UTC)
SLOW = dict(failures_per_s=0.001, failure_burst=5)  # no refill while a test runs


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    await ensure_database(fresh_db)
    db = await create_pool(fresh_db)
    await apply_schema(db, *store.SCHEMA, *holds.SCHEMA, *reviews.SCHEMA, *auth.SCHEMA, OUTBOX_DDL)
    yield db
    await db.close()


def client(
    pool: asyncpg.Pool, address: str = "203.0.113.7", development: bool = False, **limits: float
) -> httpx.AsyncClient:
    app = create_app(None, ApiLimits(**limits), development)  # type: ignore[arg-type]
    app.state.ctx = IntakeContext(
        pool, list(SYSTEMS), IdentifierSeal(Fernet.generate_key().decode()), "k" * 64
    )
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="https://intake.test")


def cookies_set(response: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def test_sign_in_checks_the_token_and_the_forms_own_value_then_sets_a_strict_secure_cookie(
    pool: asyncpg.Pool,
) -> None:
    token = await auth.create(pool, auth.Role.COMPLIANCE)
    async with client(pool) as browser:
        form = await browser.get("/login?next=/dashboard")
        assert form.status_code == 200
        assert "Secure" in cookies_set(form)["lethe_login_csrf"]
        csrf = csrf_of(form)

        async def sign_in(token: str, csrf: str, **headers: str) -> httpx.Response:
            body = {"token": token, "csrf": csrf, "next": "/dashboard"}
            return await browser.post("/login", data=body, headers=headers)

        # A string that is no token: refused, with a message, and no cookie.
        refused = await sign_in("lethe_abc_not-a-real-secret", csrf)
        assert refused.status_code == 401 and "not valid" in refused.text
        assert "lethe_token" not in cookies_set(refused)
        # A real token, but a post without this form's value (another site's page) or from
        # another site by the browser's own word: refused, no cookie.
        for csrf_sent, headers in (
            ("", {}),
            ("forged", {}),
            (csrf_of(refused), {"sec-fetch-site": "cross-site"}),
        ):
            forged = await sign_in(token, csrf_sent, **headers)
            assert forged.status_code == 403 and "lethe_token" not in cookies_set(forged)
        accepted = await sign_in(token, csrf_of(forged))
        assert accepted.status_code == 303 and accepted.headers["location"] == "/dashboard"
        cookie = cookies_set(accepted)["lethe_token"].lower()
        assert {"httponly", "secure", "samesite=strict"} <= {p.strip() for p in cookie.split(";")}
        assert (await browser.get("/dashboard")).status_code == 200  # the cookie signs the browser in


async def test_cookies_go_without_secure_only_on_a_development_stack(pool: asyncpg.Pool) -> None:
    token = await auth.create(pool, auth.Role.COMPLIANCE)
    async with client(pool, development=True) as browser:
        form = await browser.get("/login")
        accepted = await browser.post("/login", data={"token": token, "csrf": csrf_of(form)})
        assert accepted.status_code == 303
        assert "secure" not in cookies_set(accepted)["lethe_token"].lower()


async def test_failed_authentications_are_throttled_per_address_not_per_token(pool: asyncpg.Pool) -> None:
    good = await auth.create(pool, auth.Role.LEGAL)
    token_id = good.split("_")[1]
    limits = dict(SLOW, rate_per_s=0.001, burst=3)
    async with client(pool, "198.51.100.1", **limits) as guesser:
        # Wrong secrets for a real token's id: the guesser's failures, not the token's.
        for _ in range(5):
            wrong = {"Authorization": f"Bearer lethe_{token_id}_wrong-secret"}
            assert (await guesser.get("/v1/holds", headers=wrong)).status_code == 401
        throttled = await guesser.get("/v1/holds", headers={"Authorization": "Bearer lethe_x_y"})
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        # Refused before the token is looked at: a guess right or wrong costs the same wait.
        good_there = await guesser.get("/v1/holds", headers={"Authorization": f"Bearer {good}"})
        assert good_there.status_code == 429
    transport = guesser._transport
    assert isinstance(transport, httpx.ASGITransport)
    app = transport.app
    # The good token from its own address: its whole burst is still there.
    elsewhere = httpx.ASGITransport(app=app, client=("192.0.2.20", 40000))
    async with httpx.AsyncClient(transport=elsewhere, base_url="https://intake.test") as owner:
        for _ in range(3):
            answer = await owner.get("/v1/holds", headers={"Authorization": f"Bearer {good}"})
            assert answer.status_code == 200


async def test_failed_sign_ins_count_as_failures_too(pool: asyncpg.Pool) -> None:
    async with client(pool, "198.51.100.2", **SLOW) as browser:
        form = await browser.get("/login")
        for _ in range(5):
            form = await browser.post("/login", data={"token": "lethe_a_guess", "csrf": csrf_of(form)})
            assert form.status_code == 401
        blocked = await browser.post("/login", data={"token": "lethe_a_guess", "csrf": csrf_of(form)})
        assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.text
        assert int(blocked.headers["retry-after"]) >= 1 and "lethe_token" not in cookies_set(blocked)


async def test_the_api_map_needs_a_token_and_metrics_and_docs_are_not_on_the_api_port(
    pool: asyncpg.Pool,
) -> None:
    submitter = {"Authorization": f"Bearer {await auth.create(pool, auth.Role.SUBMITTER)}"}
    async with client(pool) as stranger:
        assert (await stranger.get("/openapi.json")).status_code == 401
        spec = await stranger.get("/openapi.json", headers=submitter)  # any role will do
        assert spec.status_code == 200 and "/v1/requests" in spec.json()["paths"]
        for path in ("/metrics", "/docs", "/redoc"):
            assert (await stranger.get(path, headers=submitter)).status_code == 404, path
    async with client(pool, development=True) as developer:
        for path in ("/docs", "/redoc"):
            page = await developer.get(path)
            assert page.status_code == 200 and "/openapi.json" in page.text, path


async def test_a_422_names_the_field_and_repeats_no_key_or_value_sent(pool: asyncpg.Pool) -> None:
    compliance = {"Authorization": f"Bearer {await auth.create(pool, auth.Role.ADMIN)}"}
    body = {
        "request_id": "echo-1",
        "type": "erasure",
        "identity_verified": True,
        "subject": {"emails": ["someone@example.com"], "jane.doe@example.org": "her phone"},
        "+44 7700 900123": True,
    }
    async with client(pool) as api:
        answer = await api.post("/v1/requests", json=body, headers=compliance)
        assert answer.status_code == 422
        for sent in ("jane.doe", "her phone", "7700"):
            assert sent not in answer.text, answer.text
        fields = {e["field"] for e in answer.json()["errors"]}
        assert fields == {"subject", "(body)"} and "unknown field" in answer.json()["detail"]
        hold = {"subject": {"emails": ["a@example.com"]}, "case_reference": "C-1", "reason": "litigation"}
        unknown = await api.post("/v1/holds", json=hold | {"systems": ["janedoe"]}, headers=compliance)
        assert unknown.status_code == 422 and "janedoe" not in unknown.text
        assert unknown.json()["detail"].startswith("systems:")
