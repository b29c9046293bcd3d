"""Every route from the OpenAPI document: 401 without a token, 403 for a role it does not admit,
through for one it does. Plus input limits, per-token rate limiting, and what the public port
does not serve."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cli.stack import Stack
from tests.conftest import client_for
from tests.e2e.conftest import wait_final

pytestmark = pytest.mark.e2e
ROLES = ("submitter", "compliance", "legal", "recipient", "admin")
SAMPLE_PATH_VALUES = {
    "request_id": "no-such-request",
    "hold_id": "00000000-0000-0000-0000-000000000000",
    "review_id": "00000000-0000-0000-0000-000000000000",
    "system": "crm",
    "token_id": "000000000000",
    "notice_id": "00000000-0000-0000-0000-000000000000",
}


@pytest.fixture(scope="module")
def tokens(api: httpx.Client) -> dict[str, str]:
    made = {}
    for role in ROLES:
        # A recipient's token acts for one recipient of the register (deploy/policy/recipients.yaml).
        extra = {"recipient_id": "bulk-mailer"} if role == "recipient" else {}
        response = api.post("/v1/tokens", json={"role": role, "label": f"test {role}"} | extra)
        assert response.status_code == 201
        made[role] = response.json()["token"]
    return made


def operations(api: httpx.Client) -> Iterator[tuple[str, str, list[str]]]:
    spec = api.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path.format(**SAMPLE_PATH_VALUES), operation["x-roles"]


def call(stack: Stack, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: Any = {} if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(method, f"{stack.api_url}{path}", headers=headers, json=body, timeout=10)


def test_every_route_enforces_its_roles(api: httpx.Client, stack: Stack, tokens: dict[str, str]) -> None:
    checked = 0
    for method, path, allowed in operations(api):
        # Admin may do everything but speak for a recipient (its acknowledgement).
        assert set(allowed) <= set(ROLES) and ("admin" in allowed or path.endswith("/ack")), (method, path)
        assert call(stack, method, path, None).status_code == 401, (method, path)
        assert call(stack, method, path, "lethe_nope_wrong").status_code == 401, (method, path)
        for role in ROLES:
            status = call(stack, method, path, tokens[role]).status_code
            if role in allowed:
                assert status not in (401, 403), (method, path, role, status)
            else:
                assert status == 403, (method, path, role, status)
        checked += 1
    assert checked >= 12


def test_roles_match_the_design(api: httpx.Client) -> None:
    roles = {(m, p): set(r) for m, p, r in operations(api)}
    assert roles[("POST", "/v1/requests")] == {"submitter", "admin"}
    assert roles[("GET", "/v1/requests/no-such-request/report")] == {"submitter", "compliance", "admin"}
    assert roles[("POST", "/v1/requests/no-such-request/extension")] == {"compliance", "admin"}
    assert roles[("GET", "/v1/exports/requests.csv")] == {"compliance", "admin"}
    assert roles[("POST", "/v1/holds")] == {"legal", "admin"}
    assert roles[("POST", "/v1/tokens")] == {"admin"}
    assert roles[("GET", "/v1/tokens")] == {"admin"}
    assert roles[("DELETE", "/v1/tokens/000000000000")] == {"admin"}
    assert roles[("GET", "/v1/reviews")] == {"compliance", "admin"}
    assert roles[("POST", "/v1/reviews/00000000-0000-0000-0000-000000000000")] == {"compliance", "admin"}
    assert roles[("GET", "/v1/notices")] == {"compliance", "recipient", "admin"}
    notice = "/v1/notices/00000000-0000-0000-0000-000000000000"
    assert roles[("POST", f"{notice}/ack")] == {"recipient"}
    assert roles[("POST", f"{notice}/close")] == {"compliance", "admin"}
    assert roles[("GET", "/v1/requests/no-such-request/recipients")] == {"submitter", "compliance", "admin"}


def test_a_recipient_token_names_a_recipient_of_the_register(api: httpx.Client) -> None:
    assert api.post("/v1/tokens", json={"role": "recipient"}).status_code == 422
    unknown = api.post("/v1/tokens", json={"role": "recipient", "recipient_id": "nobody-known"})
    assert unknown.status_code == 422 and "recipient_id" in unknown.json()["detail"]
    assert api.post("/v1/tokens", json={"role": "legal", "recipient_id": "bulk-mailer"}).status_code == 422


def test_tokens_are_stored_hashed(stack: Stack, tokens: dict[str, str]) -> None:
    import asyncio

    import asyncpg

    async def stored() -> list[str]:
        conn = await asyncpg.connect(stack.database_url("intake"))
        try:
            return [r["secret_sha256"] for r in await conn.fetch("SELECT secret_sha256 FROM api_tokens")]
        finally:
            await conn.close()

    hashes = asyncio.run(stored())
    for token in tokens.values():
        secret = token.split("_")[2]
        assert all(secret not in h for h in hashes)


def test_oversized_bodies_are_refused(api: httpx.Client) -> None:
    big = {
        "request_id": "big",
        "type": "erasure",
        "identity_verified": True,
        "subject": {"emails": ["a@example.com"]},
        "padding": "x" * 100_000,
    }
    response = api.post("/v1/requests", json=big)
    assert response.status_code == 413 and "body" in response.json()["detail"]
    too_many = {
        "request_id": "many",
        "type": "erasure",
        "identity_verified": True,
        "subject": {"emails": [f"p{i}@example.com" for i in range(50)]},
    }
    response = api.post("/v1/requests", json=too_many)
    assert response.status_code == 422 and "subject.emails" in response.json()["detail"]


def test_each_token_is_rate_limited(api: httpx.Client, stack: Stack) -> None:
    token = api.post("/v1/tokens", json={"role": "legal"}).json()["token"]
    burst, per_s = 200, 50  # the stack's defaults (LETHE_RATE_LIMIT_BURST, LETHE_RATE_LIMIT_PER_S)

    # Calls in rounds until one is refused: however fast this machine answers, the bucket never
    # admits more than its burst plus what refilled meanwhile, and a machine that answers faster
    # than the refill meets a 429 sooner or later.
    async def hammer() -> tuple[int, float, bool]:
        headers = {"Authorization": f"Bearer {token}"}
        admitted, started = 0, time.monotonic()
        async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=30) as client:
            for _ in range(60):
                statuses = await asyncio.gather(*(client.get("/v1/holds") for _ in range(50)))
                admitted += sum(r.status_code == 200 for r in statuses)
                refused = [r for r in statuses if r.status_code == 429]
                if refused:
                    assert int(refused[0].headers["Retry-After"]) >= 1
                    return admitted, time.monotonic() - started, True
        return admitted, time.monotonic() - started, False

    admitted, elapsed, refused = asyncio.run(hammer())
    assert refused, (admitted, elapsed)
    assert burst <= admitted <= burst + per_s * elapsed + 50, (admitted, elapsed)
    assert api.get("/v1/holds").status_code == 200  # another token is not affected


def test_tokens_are_listed_without_secrets_and_a_revoked_one_stops_at_once(api: httpx.Client) -> None:
    made = api.post("/v1/tokens", json={"role": "submitter", "label": "to revoke"}).json()["token"]
    token_id, secret = made.split("_", 2)[1:]
    probe = {"Authorization": f"Bearer {made}"}
    assert api.get("/v1/requests", headers=probe).status_code == 200
    listed = {t["id"]: t for t in api.get("/v1/tokens").json()}
    assert listed[token_id]["role"] == "submitter" and listed[token_id]["last_used_at"]
    assert secret not in api.get("/v1/tokens").text
    revoked = api.delete(f"/v1/tokens/{token_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert api.get("/v1/requests", headers=probe).status_code == 401
    assert api.delete(f"/v1/tokens/{token_id}").json()["revoked_at"] == revoked.json()["revoked_at"]
    assert api.delete("/v1/tokens/nosuchtoken").status_code == 404


def test_a_lone_surrogate_is_bad_input_not_a_server_error(api: httpx.Client) -> None:
    body = (
        b'{"request_id": "surrogate-1", "type": "erasure", "identity_verified": true,'
        b' "subject": {"emails": ["a\\ud800@b.example"]}}'
    )
    answer = api.post("/v1/requests", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and "emails" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("metadata", "http://169.254.169.254/latest/meta-data/"),
        ("private", "http://10.0.0.5/hook"),
        ("unique-local", "http://[fd00::1]/hook"),
    ],
)
def test_a_callback_to_a_private_or_metadata_address_is_refused_at_submission(
    api: httpx.Client, name: str, target: str
) -> None:
    body = {
        "request_id": f"ssrf-{name}",
        "type": "erasure",
        "identity_verified": True,
        "subject": {"emails": ["ssrf@example.com"]},
        "callback_url": target,
    }
    answer = api.post("/v1/requests", json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"] == "callback_url: cannot be used as a callback target"


def test_a_submitter_reads_and_probes_only_its_own_requests(api: httpx.Client, stack: Stack) -> None:
    """Every route that reads a request, from the published spec: another submitter's request
    is answered like a missing one; submitting a guess at its body gets one answer, right or
    wrong (issue 16, items 6 and 7)."""

    def submitter() -> httpx.Client:
        token = api.post("/v1/tokens", json={"role": "submitter"}).json()["token"]
        return client_for(stack, token)

    mine, theirs = submitter(), submitter()
    body = {
        "request_id": "scope-e2e",
        "type": "erasure",
        "identity_verified": True,
        "subject": {"emails": ["scope.e2e@example.com"]},
    }
    with mine, theirs:
        assert mine.post("/v1/requests", json=body).status_code == 202
        wait_final(mine, "scope-e2e")  # so that its report exists
        right = theirs.post("/v1/requests", json=body)
        wrong = theirs.post(
            "/v1/requests", json={**body, "subject": {"emails": ["someone.else@example.com"]}}
        )
        assert (right.status_code, right.json()) == (wrong.status_code, wrong.json())
        assert right.status_code == 409
        checked = 0
        for path, methods in api.get("/openapi.json").json()["paths"].items():
            operation = methods.get("get")
            if "{request_id}" not in path or not operation or "submitter" not in operation["x-roles"]:
                continue
            own = path.format(**{**SAMPLE_PATH_VALUES, "request_id": "scope-e2e"})
            missing = theirs.get(path.format(**SAMPLE_PATH_VALUES))
            other = theirs.get(own)
            assert other.status_code == missing.status_code == 404, path
            assert other.json() == missing.json(), path
            assert mine.get(own).status_code == api.get(own).status_code == 200, path
            checked += 1
        assert checked >= 3  # the request, its report, its audit trail
        assert "scope-e2e" in {r["request_id"] for r in mine.get("/v1/requests").json()}
        assert "scope-e2e" not in {r["request_id"] for r in theirs.get("/v1/requests").json()}
        assert "scope-e2e" in {
            r["request_id"] for r in api.get("/v1/requests", params={"limit": 1000}).json()
        }


def test_the_api_port_serves_neither_metrics_nor_the_api_map_to_strangers(stack: Stack) -> None:
    assert httpx.get(f"{stack.api_url}/openapi.json").status_code == 401
    assert httpx.get(f"{stack.api_url}/metrics").status_code == 404
    ports = json.loads((stack.config.state_dir / "run" / "metrics-ports.json").read_text())
    scraped = httpx.get(f"http://127.0.0.1:{ports['intake']}/metrics")
    assert scraped.status_code == 200 and "# TYPE" in scraped.text  # Prometheus text, on its own port
