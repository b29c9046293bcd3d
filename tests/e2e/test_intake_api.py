"""The HTTP API's contract, on the running stack."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from cli.stack import Stack

pytestmark = pytest.mark.e2e
BODY = {
    "request_id": "api-1",
    "type": "erasure",
    "identity_verified": True,
    "subject": {"emails": ["nobody.here@example.com"]},
    "systems": ["mailing", "crm"],
}


async def _stored(stack: Stack, request_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(stack.database_url("intake"))
    try:
        requests = await conn.fetchval("SELECT count(*) FROM requests WHERE request_id = $1", request_id)
        return int(requests), 0
    finally:
        await conn.close()


def test_submit_is_idempotent_on_request_id(api: httpx.Client) -> None:
    first = api.post("/v1/requests", json=BODY)
    assert first.status_code == 202
    again = api.post("/v1/requests", json={**BODY, "subject": {"emails": ["NOBODY.here@example.com "]}})
    assert again.status_code == 202
    assert again.json()["received_at"] == first.json()["received_at"]
    assert first.json()["systems"] == ["crm", "mailing"]


def test_same_id_with_another_body_is_a_conflict(api: httpx.Client) -> None:
    api.post("/v1/requests", json=BODY)
    conflict = api.post("/v1/requests", json={**BODY, "type": "restriction"})
    assert conflict.status_code == 409
    assert "request_id" in conflict.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"identity_verified": False}, "identity_verified"),
        ({"subject": {"emails": ["not-an-email"]}}, "subject.emails.0"),
        ({"subject": {"phones": ["12"]}}, "subject.phones.0"),
        ({"subject": {}}, "subject"),
        ({"type": "delete_everything"}, "type"),
        ({"request_id": "has spaces"}, "request_id"),
        ({"systems": ["payroll"]}, "systems"),
        ({"received_at": "2020-01-01T00:00:00"}, "received_at"),
    ],
)
def test_invalid_input_is_422_naming_the_field_and_stores_nothing(
    api: httpx.Client, stack: Stack, change: dict[str, object], field: str
) -> None:
    body = {**BODY, "request_id": "api-bad", **change}
    response = api.post("/v1/requests", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert "not-an-email" not in response.text  # bad input is not echoed back
    assert asyncio.run(_stored(stack, "api-bad"))[0] == 0


def test_unknown_request_is_404(api: httpx.Client) -> None:
    assert api.get("/v1/requests/does-not-exist").status_code == 404
    assert api.get("/v1/requests/does-not-exist/report").status_code == 404


def test_list_filters_by_status(api: httpx.Client) -> None:
    api.post("/v1/requests", json=BODY)
    listed = api.get("/v1/requests", params={"overdue": "false"}).json()
    assert "api-1" in {r["request_id"] for r in listed}
    assert api.get("/v1/requests", params={"status": "nonsense"}).status_code == 422


def test_openapi_is_published(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    assert "/v1/requests" in spec["paths"] and "/v1/requests/{request_id}/report" in spec["paths"]
