"""A callback_url is refused before anything is stored when it could not, or should not, be
called; and an ingress reply never carries the submitter's record key. No database: every case
here is decided before intake touches one."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import httpcore
import pytest

from services.intake import ingress
from services.intake.egress import Egress
from services.intake.holds_api import PlaceHold, _categories
from services.intake.models import SubmitRequest
from services.intake.service import IntakeContext, Unacceptable, accept
from shared.crypto import IdentifierSeal

BODY = {
    "request_id": "ticket-1",
    "type": "erasure",
    "identity_verified": True,
    "subject": {"emails": ["alice@example.com"]},
}
FORBIDDEN = "callback_url: cannot be used as a callback target"


class Unresolvable(Egress):
    """As Egress answers a name DNS does not know, without asking a resolver."""

    async def addresses(self, host: str, port: int) -> list[str]:
        raise httpcore.ConnectError("cannot resolve the host: Name or service not known")


def context(egress: Egress | None = None, https_only: bool = True) -> IntakeContext:
    return IntakeContext(
        pool=cast(Any, None),
        systems=["crm"],
        seal=cast(IdentifierSeal, None),
        pseudonym_key="a" * 64,
        callbacks_enabled=True,
        egress=egress or Egress(),
        callbacks_https_only=https_only,
    )


async def refusal(ctx: IntakeContext, url: str) -> str:
    with pytest.raises(Unacceptable) as refused:
        await accept(ctx, SubmitRequest.model_validate({**BODY, "callback_url": url}), "ingress")
    return str(refused.value)


async def test_an_unresolvable_host_is_refused_like_an_internal_one() -> None:
    internal = await refusal(context(), "https://10.0.0.1/hook")
    unknown = await refusal(context(Unresolvable()), "https://billing.corp.internal/hook")
    assert internal == unknown == FORBIDDEN
    # A host label longer than DNS allows fails in the resolver's IDNA step: the same answer.
    assert await refusal(context(), "https://" + "a" * 64 + ".example.com/hook") == FORBIDDEN


async def test_plain_http_is_refused_outside_a_development_stack() -> None:
    assert await refusal(context(), "http://8.8.8.8/hook") == "callback_url: must be https"
    # On a development stack the scheme passes and the address is what is judged.
    assert await refusal(context(https_only=False), "http://10.0.0.1/hook") == FORBIDDEN


class CapturingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def publish(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({**BODY, "type": "no-such-type"}, b"ticket-1"),  # refused, with a valid id to echo
        ({**BODY, "request_id": "bob@example.com?"}, b"unknown"),  # no valid id
        (b"not json", b"unknown"),
    ],
)
async def test_an_ingress_reply_is_keyed_by_the_request_id_not_the_record_key(
    body: dict[str, Any] | bytes, key: bytes
) -> None:
    publisher = CapturingPublisher()
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    record = SimpleNamespace(key=b"alice@example.com", value=value, offset=7)
    await ingress.reply(context(), cast(Any, publisher), cast(Any, record))
    [(_, sent_key, reply)] = publisher.sent
    assert sent_key == key
    assert b"alice@example.com" not in reply


@pytest.mark.parametrize("raw", [b"[" * 5000, b'{"request_id": ' + b"9" * 5000 + b"}", b"\xff", b"not json"])
async def test_a_submission_that_is_not_json_is_answered_so_whatever_breaks_the_parser(raw: bytes) -> None:
    answer = await ingress.handle(context(), raw)
    assert not answer.accepted and answer.error == "(body): not JSON" and answer.request_id is None


def test_a_holds_categories_are_taken_in_the_policys_spelling() -> None:
    body = PlaceHold.model_validate(
        {
            "subject": {"customer_id": "C-1"},
            "case_reference": "LIT-1",
            "reason": "litigation",
            "categories": ["Invoices ", "invoices", "contacts"],
        }
    )
    known = {"billing": frozenset({"invoices"}), "crm": frozenset({"contacts"})}
    assert _categories(body, ["billing", "crm"], known) == ["invoices", "contacts"]
