"""Intake's web surface, on the application itself over a real database (no broker needed):
sign-in that checks the token and resists cross-site posting, Secure cookies, failed
authentications throttled per address (a valid token still admitted), no API map or metrics for
strangers, 422s that repeat nothing sent, and listings that stay bounded however many rows there
are."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet

from services.intake import auth, export, holds, notices, pages, reviews, store
from services.intake.admission import AdmissionLimits
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
    await apply_schema(
        db, *store.SCHEMA, *holds.SCHEMA, *reviews.SCHEMA, *notices.SCHEMA, *auth.SCHEMA, OUTBOX_DDL
    )
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
        # The same address behind a proxy or NAT is everyone's: a valid token is still admitted
        # there, so bad tokens cannot lock its other clients out, and bad ones stay refused.
        good_there = await guesser.get("/v1/holds", headers={"Authorization": f"Bearer {good}"})
        assert good_there.status_code == 200
        again = await guesser.get("/v1/holds", headers={"Authorization": "Bearer lethe_x_y"})
        assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1
    transport = guesser._transport
    assert isinstance(transport, httpx.ASGITransport)
    app = transport.app
    assert len(app.state.auth_failures._buckets) == 1  # refusals past the budget keep no more state
    # The good token from its own address: the guesses took nothing from its burst (3, one of
    # them used above), and its own rate limit still holds.
    elsewhere = httpx.ASGITransport(app=app, client=("192.0.2.20", 40000))
    async with httpx.AsyncClient(transport=elsewhere, base_url="https://intake.test") as owner:
        for _ in range(2):
            answer = await owner.get("/v1/holds", headers={"Authorization": f"Bearer {good}"})
            assert answer.status_code == 200
        spent = await owner.get("/v1/holds", headers={"Authorization": f"Bearer {good}"})
        assert spent.status_code == 429 and "for this token" in spent.text


async def test_failed_sign_ins_count_as_failures_too(pool: asyncpg.Pool) -> None:
    token = await auth.create(pool, auth.Role.COMPLIANCE)
    async with client(pool, "198.51.100.2", **SLOW) as browser:
        form = await browser.get("/login")
        for _ in range(5):
            form = await browser.post("/login", data={"token": "lethe_a_guess", "csrf": csrf_of(form)})
            assert form.status_code == 401
        blocked = await browser.post("/login", data={"token": "lethe_a_guess", "csrf": csrf_of(form)})
        assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.text
        assert int(blocked.headers["retry-after"]) >= 1 and "lethe_token" not in cookies_set(blocked)
        # A valid token still signs in from that (perhaps shared) address.
        accepted = await browser.post("/login", data={"token": token, "csrf": csrf_of(blocked)})
        assert accepted.status_code == 303 and "lethe_token" in cookies_set(accepted)


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


async def add_requests(pool: asyncpg.Pool, count: int, overdue: int, completed_fast: int) -> None:
    """`overdue` not completed and past their deadline, `completed_fast` done in 30 s, the rest
    done in two days, all before their deadlines."""
    rows = []
    for i in range(count):
        received = T0 + timedelta(minutes=i)
        late = i < overdue
        done = (
            None
            if late
            else received + (timedelta(seconds=30) if i < overdue + completed_fast else timedelta(days=2))
        )
        status = "in_progress" if late else "completed"
        deadline = received + (timedelta(days=1) if late else timedelta(days=30))
        rows.append(
            (f"req-{i:03d}", "x", "erasure", "ref", "sealed", ["crm"], received, deadline, status, done)
        )
    await pool.executemany(
        "INSERT INTO requests (request_id, fingerprint, request_type, subject_ref, sealed_identifiers,"
        " systems, received_at, deadline, status, completed_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        rows,
    )


async def test_the_dashboard_counts_every_request_but_lists_a_page_and_a_capped_overdue(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "OVERDUE_SHOWN", 5)
    await add_requests(pool, 60, overdue=12, completed_fast=18)
    compliance = {"Authorization": f"Bearer {await auth.create(pool, auth.Role.COMPLIANCE)}"}
    async with client(pool) as browser:
        first = (await browser.get("/dashboard", headers=compliance)).text
        by_status = first[
            first.index('id="by-status"') : first.index("</table>", first.index('id="by-status"'))
        ]
        assert '<td class="num">60</td>' in by_status  # the total counts every request
        assert '<span class="badge overdue">12</span>' in by_status
        assert "Showing the 5 of 12 overdue" in first and first.count("<tr><td><a href") == 5 + 25
        assert "Showing 1 to 25 of 60" in first and 'href="/dashboard?page=2"' in first
        assert "&lt;1 min: 18" in first and "&lt;1 week: 30" in first  # the histogram, by the database
        assert "median 2.0 days" in first and "slowest 2.0 days" in first
        last = (await browser.get("/dashboard?page=3&received_from=2020-03-02", headers=compliance)).text
        assert "Showing 51 to 60 of 60" in last and 'id="next-page"' not in last
        assert 'href="/dashboard?received_from=2020-03-02&amp;page=2"' in last


async def test_the_csv_export_streams_every_request_in_batches(pool: asyncpg.Pool) -> None:
    await add_requests(pool, 25, overdue=3, completed_fast=2)
    chunks = [c async for c in export.requests_csv(pool, None, None, T0 + timedelta(days=400), batch=10)]
    assert [c.count("\n") for c in chunks] == [1, 10, 10, 5]  # the header, then batch by batch
    compliance = {"Authorization": f"Bearer {await auth.create(pool, auth.Role.COMPLIANCE)}"}
    async with client(pool) as auditor:
        answer = await auditor.get("/v1/exports/requests.csv", headers=compliance)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert "content-length" not in answer.headers  # streamed, not built whole first
        lines = list(csv.DictReader(io.StringIO(answer.text)))
        assert len(lines) == 25 and sum(line["overdue"] == "True" for line in lines) == 3
        assert lines[0]["request_id"] == "req-024"  # newest first


async def test_holds_are_listed_a_page_at_a_time(pool: asyncpg.Pool) -> None:
    for i in range(5):
        await holds.place(
            pool,
            holds.NewHold(
                f"CASE-{i}",
                "litigation",
                f"subj_{uuid4().hex}",
                "sealed",
                None,
                None,
                T0 + timedelta(hours=i),
                None,
            ),
        )
    legal = {"Authorization": f"Bearer {await auth.create(pool, auth.Role.LEGAL)}"}
    async with client(pool) as api:
        pages_seen = [
            (await api.get("/v1/holds", params={"limit": 2, "offset": offset}, headers=legal)).json()
            for offset in (0, 2, 4)
        ]
        assert [len(p) for p in pages_seen] == [2, 2, 1]
        assert [h["case_reference"] for p in pages_seen for h in p] == [f"CASE-{i}" for i in range(4, -1, -1)]
        assert (await api.get("/v1/holds", params={"limit": 1001}, headers=legal)).status_code == 422


async def test_a_busy_intake_sheds_submissions_with_503_and_loses_none_when_they_come_back(
    pool: asyncpg.Pool,
) -> None:
    """Every submission slower than the target (here: all of them) lets fewer in at once; the
    rest are refused before anything is read or stored, and each, sent again, is stored once."""
    token = await auth.create(pool, auth.Role.SUBMITTER)
    app = create_app(None, ApiLimits(admission=AdmissionLimits(max_in_flight=64, target_s=1e-9)))
    app.state.ctx = IntakeContext(
        pool, list(SYSTEMS), IdentifierSeal(Fernet.generate_key().decode()), "k" * 64
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    headers = {"Authorization": f"Bearer {token}"}
    refused: list[httpx.Response] = []

    async def submit(browser: httpx.AsyncClient, i: int) -> None:
        body = {
            "request_id": f"busy-{i}",
            "type": "erasure",
            "identity_verified": True,
            "subject": {"emails": [f"busy{i}@example.org"]},
        }
        for _ in range(200):
            answer = await browser.post("/v1/requests", json=body, headers=headers)
            if answer.status_code != 503:
                assert answer.status_code == 202, answer.text
                return
            refused.append(answer)
            await asyncio.sleep(0.01)  # Retry-After says seconds; the test does not wait them
        raise AssertionError(f"busy-{i} never admitted")

    async with httpx.AsyncClient(transport=transport, base_url="https://intake.test") as browser:
        await asyncio.gather(*(submit(browser, i) for i in range(40)))
    assert refused, "40 at once past a limit of 8 that only shrinks: some must be refused"
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert {r.json()["detail"] for r in refused} == {
        "intake is busy: send the request again after Retry-After"
    }
    assert await pool.fetchval("SELECT count(*) FROM requests WHERE request_id LIKE 'busy-%'") == 40
    # one acceptance and a command per system each: nothing dispatched twice, nothing missing
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 40 * (1 + len(SYSTEMS))


async def test_a_chunked_submission_past_the_size_limit_is_refused_before_admission_counts_it(
    pool: asyncpg.Pool,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    async with client(pool, max_body_bytes=16 * 1024) as api:
        answer = await api.post("/v1/requests", content=chunks(), headers={"Authorization": "Bearer x"})
    assert answer.status_code == 413 and "body" in answer.json()["detail"]


async def test_a_hold_that_would_protect_nothing_is_refused_naming_the_field(pool: asyncpg.Pool) -> None:
    """Workers compare a hold's categories exactly with the policy's names: `invoice`, or a CRM
    category on a billing-only hold, was acknowledged with 201 and kept nothing. So was a hold
    that had expired before it was placed."""
    legal = {"Authorization": f"Bearer {await auth.create(pool, auth.Role.LEGAL)}"}
    hold = {"subject": {"customer_id": "C-1"}, "case_reference": "LIT-1", "reason": "litigation"}
    async with client(pool) as api:
        for categories, systems in ((["invoice"], ["billing"]), (["invoices", "contacts"], ["billing"])):
            refused = await api.post(
                "/v1/holds", json=hold | {"categories": categories, "systems": systems}, headers=legal
            )
            assert refused.status_code == 422, refused.text
            assert (
                refused.json()["detail"].startswith("categories[") and "invoices" in refused.json()["detail"]
            )
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        expired = await api.post("/v1/holds", json=hold | {"expires_at": past}, headers=legal)
        assert expired.status_code == 422 and expired.json()["detail"].startswith("expires_at:")
    assert await pool.fetchval("SELECT count(*) FROM holds") == 0


async def test_a_nul_or_a_date_out_of_range_is_a_4xx_never_a_500(pool: asyncpg.Pool) -> None:
    """PostgreSQL refuses NUL, and a year-1 time overflows on its way there: each was a 500."""
    token = await auth.create(pool, auth.Role.ADMIN)
    admin = {"Authorization": f"Bearer {token}"}
    hold = {"subject": {"customer_id": "C-1"}, "case_reference": "LIT-1", "reason": "liti\x00gation"}
    request = {"request_id": "nul-1", "type": "erasure", "identity_verified": True}
    request |= {"subject": {"customer_id": "C-1"}}
    async with client(pool) as api:
        refused = await api.post("/v1/holds", json=hold, headers=admin)
        assert refused.status_code == 422 and refused.json()["detail"].startswith("reason:")
        assert (await api.get("/v1/requests/a%00b", headers=admin)).status_code == 422
        nul_cookie = {"Cookie": 'lethe_token="lethe_a\\000b_x"'}
        assert (await api.get("/v1/requests", headers=nul_cookie)).status_code == 401
        for when in ("0001-01-01T00:00:00+14:00", "2017-01-01T00:00:00Z"):
            early = await api.post("/v1/requests", json=request | {"received_at": when}, headers=admin)
            assert early.status_code == 422 and "received_at" in early.json()["detail"], early.text
        # A sender's clock a little ahead of ours is not "in the future".
        ahead = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
        accepted = await api.post("/v1/requests", json=request | {"received_at": ahead}, headers=admin)
        assert accepted.status_code == 202, accepted.text
