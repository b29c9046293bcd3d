"""Issue 16, items 6 and 7, through the HTTP API on a real database: a submitter reads only the
requests its own token submitted, and cannot use a request id to confirm a guessed e-mail."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.intake import auth, callbacks, ingress, rekey, scope, store
from services.intake.app import ApiLimits, create_app
from services.intake.models import SubmitRequest
from services.intake.service import IntakeContext
from shared.crypto import IdentifierSeal, new_identifier_key
from shared.db import apply_schema, create_pool, ensure_database
from shared.outbox import OUTBOX_DDL

pytestmark = pytest.mark.integration
ALICE = {
    "request_id": "scope-1",
    "type": "erasure",
    "identity_verified": True,
    "subject": {"emails": ["alice@example.com"]},
}
SCHEMA = (*store.SCHEMA, *callbacks.SCHEMA, *auth.SCHEMA, OUTBOX_DDL)


@pytest.fixture
async def ctx(fresh_db: str) -> AsyncIterator[IntakeContext]:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db)
    await apply_schema(pool, *SCHEMA)
    yield IntakeContext(pool, ["crm", "mailing"], IdentifierSeal(new_identifier_key()), os.urandom(32).hex())
    await pool.close()


@pytest.fixture
async def clients(ctx: IntakeContext) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A client per token: two submitters (a, b), compliance and admin."""

    @contextlib.asynccontextmanager
    async def no_lifespan(_: Any) -> AsyncIterator[None]:
        yield

    app = create_app(no_lifespan, ApiLimits())
    app.state.ctx = ctx
    roles = {"a": auth.Role.SUBMITTER, "b": auth.Role.SUBMITTER}
    roles |= {"compliance": auth.Role.COMPLIANCE, "admin": auth.Role.ADMIN}
    async with contextlib.AsyncExitStack() as stack:
        made = {}
        for name, role in roles.items():
            token = await auth.create(ctx.pool, role, name)
            made[name] = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://intake",
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
        yield made


async def outbox_rows(ctx: IntakeContext) -> int:
    return int(await ctx.pool.fetchval("SELECT count(*) FROM outbox"))


async def test_a_submitter_reads_only_its_own_requests(
    ctx: IntakeContext, clients: dict[str, httpx.AsyncClient]
) -> None:
    a, b = clients["a"], clients["b"]
    assert (await a.post("/v1/requests", json=ALICE)).status_code == 202
    await ctx.pool.execute('UPDATE requests SET report = \'{"status": "completed"}\'')
    for route in ("", "/report", "/audit"):
        mine = await a.get(f"/v1/requests/scope-1{route}")
        assert mine.status_code == 200, route
        theirs, missing = (
            await b.get(f"/v1/requests/scope-1{route}"),
            await b.get(f"/v1/requests/none{route}"),
        )
        # Another's request is answered exactly like one that does not exist.
        assert (
            (theirs.status_code, theirs.json())
            == (missing.status_code, missing.json())
            == (
                404,
                {"detail": "request_id: no such request"},
            )
        ), route
        for reader in ("compliance", "admin"):
            assert (await clients[reader].get(f"/v1/requests/scope-1{route}")).status_code == 200
    listed = {
        name: [r["request_id"] for r in (await c.get("/v1/requests")).json()] for name, c in clients.items()
    }
    assert listed == {"a": ["scope-1"], "b": [], "compliance": ["scope-1"], "admin": ["scope-1"]}
    token_id = await ctx.pool.fetchval("SELECT token_id FROM api_tokens WHERE label = 'a'")
    assert await ctx.pool.fetchval("SELECT submitted_by FROM requests") == f"token:{token_id}"


async def test_another_token_cannot_confirm_a_guess_by_submitting_it(
    ctx: IntakeContext, clients: dict[str, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = clients["a"], clients["b"]
    first = await a.post("/v1/requests", json=ALICE)
    dispatched = await outbox_rows(ctx)
    right = await b.post("/v1/requests", json=ALICE)
    wrong = await b.post("/v1/requests", json={**ALICE, "subject": {"emails": ["bob@example.com"]}})
    assert right.status_code == wrong.status_code == 409
    # Told nothing more, the submitter; but compliance can see an id taken from another tool.
    taken = [r for r in caplog.records if r.getMessage() == "request id already used"]
    assert [getattr(r, "other_submitter", None) for r in taken] == [True, True]
    assert right.json() == wrong.json() == {"detail": "request_id: already used for a different request"}
    # The owner's resubmission is still idempotent; its own different body is the same conflict.
    again = await a.post("/v1/requests", json={**ALICE, "subject": {"emails": [" Alice@Example.com"]}})
    assert (again.status_code, again.json()) == (202, first.json())
    changed = await a.post("/v1/requests", json={**ALICE, "type": "restriction"})
    assert (changed.status_code, changed.json()) == (409, right.json())
    assert await outbox_rows(ctx) == dispatched  # nothing dispatched twice, nothing for b
    stored = await ctx.pool.fetchval("SELECT fingerprint FROM requests")
    assert SubmitRequest.model_validate(ALICE).digest() not in stored  # an unkeyed hash confirms guesses


async def test_ingress_submissions_have_a_submitter_of_their_own(
    ctx: IntakeContext, clients: dict[str, httpx.AsyncClient]
) -> None:
    raw = json.dumps({**ALICE, "request_id": "topic-1"}).encode()
    assert (await ingress.handle(ctx, raw)).accepted
    assert (await ingress.handle(ctx, raw)).accepted  # idempotent on the topic too
    assert await ctx.pool.fetchval("SELECT submitted_by FROM requests") == scope.INGRESS
    assert (await clients["a"].get("/v1/requests/topic-1")).status_code == 404
    assert (await clients["compliance"].get("/v1/requests/topic-1")).status_code == 200
    assert (
        await clients["a"].post("/v1/requests", json={**ALICE, "request_id": "topic-1"})
    ).status_code == 409
    assert (await clients["a"].post("/v1/requests", json=ALICE)).status_code == 202
    refused = await ingress.handle(ctx, json.dumps(ALICE).encode())
    assert not refused.accepted and refused.error == "request_id: already used for a different request"


async def test_requests_stored_before_the_upgrade_are_keyed_and_left_to_compliance(
    ctx: IntakeContext, clients: dict[str, httpx.AsyncClient]
) -> None:
    body = SubmitRequest.model_validate(ALICE)
    await ctx.pool.execute(
        "INSERT INTO requests (request_id, fingerprint, request_type, subject_ref, sealed_identifiers,"
        " systems, received_at, deadline) VALUES ($1, $2, 'erasure', 'subj_x', NULL, '{crm}', now(), now())",
        "scope-1",
        body.legacy_digest(),  # what an earlier version stored: unkeyed, no submitter
    )
    await apply_schema(ctx.pool, *SCHEMA)  # the schema again, as every start applies it
    assert await rekey.key_unkeyed_fingerprints(ctx.pool, ctx.fingerprints, batch=1) == 1
    assert await rekey.key_unkeyed_fingerprints(ctx.pool, ctx.fingerprints) == 0
    assert await ctx.pool.fetchval("SELECT fingerprint FROM requests") == ctx.fingerprints.keyed(
        body.legacy_digest()
    )
    assert (await clients["compliance"].get("/v1/requests/scope-1")).status_code == 200
    assert (await clients["admin"].get("/v1/requests")).json()[0]["request_id"] == "scope-1"
    assert (await clients["a"].get("/v1/requests/scope-1")).status_code == 404
    assert (await clients["a"].post("/v1/requests", json=ALICE)).status_code == 409
