"""What a dead letter carries in clear, whatever the failed message was: never its key or value,
never a submitter's headers; and an error quoting the message quotes no personal data."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from cli.dlq import DeadLetter
from shared import topics
from shared.codec import PoisonMessage, decode
from shared.contracts.commands import SUBJECT_COMMAND
from shared.crypto import IdentifierSeal, new_identifier_key
from shared.dead_letters import id_headers, is_sealed, open_letter, seal_letter
from shared.delivery import Publisher

SEAL = IdentifierSeal(new_identifier_key())
EMAIL = "someone@example.com"


class Producer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **message: Any) -> None:
        self.sent.append({"topic": topic, **message})


def record(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    return ConsumerRecord(topic, 3, 41, 0, 0, key, value, None, len(key or b""), len(value), headers)


@pytest.mark.parametrize("key", [None, b"", EMAIL.encode()])
def test_the_envelope_gives_back_key_and_value_byte_for_byte(key: bytes | None) -> None:
    value = b"\x00\xff" + EMAIL.encode()
    sealed = seal_letter(SEAL, key, value)
    assert EMAIL.encode() not in sealed
    assert open_letter(SEAL, sealed) == (key, value)


async def test_a_dead_letter_keeps_ids_and_error_in_clear_and_the_rest_sealed() -> None:
    producer = Producer()
    value = json.dumps({"request_id": "r-1", "subject": {"emails": [EMAIL]}}).encode()
    headers = [("traceparent", b"00-ab-cd-01"), ("x-upstream", EMAIL.encode()), ("lethe-attempt", b"2")]
    await Publisher(producer, SEAL).dead_letter(record(topics.INGRESS, EMAIL.encode(), value, headers), "E")  # type: ignore[arg-type]
    [sent] = producer.sent
    assert sent["topic"] == topics.DEAD_LETTERS and sent["key"] is None
    clear = dict(sent["headers"])
    assert clear["lethe-request-id"] == b"r-1" and clear["lethe-error"] == b"E"
    assert clear["lethe-source-topic"] == topics.INGRESS.encode() and clear["lethe-attempt"] == b"2"
    assert "x-upstream" not in clear and is_sealed(sent["headers"])
    assert EMAIL.encode() not in sent["value"] + b"".join(clear.values())
    assert open_letter(SEAL, sent["value"]) == (EMAIL.encode(), value)
    listed = DeadLetter.of(record(topics.DEAD_LETTERS, None, sent["value"], sent["headers"]))
    assert (listed.source_topic, listed.error, listed.request_id) == (topics.INGRESS, "E", "r-1")


def test_a_letter_from_before_sealing_is_still_listed_by_its_body() -> None:
    legacy = record(
        topics.DEAD_LETTERS,
        b"k",
        json.dumps({"request_id": "old", "message_id": 7}).encode(),
        [("lethe-source-topic", b"lethe.commands.crm.v1"), ("lethe-error", b"x")],
    )
    assert (DeadLetter.of(legacy).request_id, DeadLetter.of(legacy).message_id) == ("old", "7")


@pytest.mark.parametrize(
    "value",
    [
        b"\x00garbage",
        b"[1, 2]",
        b'{"request_id": {"email": "a@b"}}',
        b'{"request_id": "someone@example.com"}',
    ],
)
def test_a_body_without_plain_ids_gives_none(value: bytes) -> None:
    assert id_headers(value) == []


def test_an_unsupported_version_is_quoted_only_when_it_is_a_number() -> None:
    with pytest.raises(PoisonMessage, match=r"unsupported version 9$"):
        decode(json.dumps({"schema_version": 9}).encode(), SUBJECT_COMMAND)
    with pytest.raises(PoisonMessage) as caught:
        decode(json.dumps({"schema_version": EMAIL}).encode(), SUBJECT_COMMAND)
    assert EMAIL not in str(caught.value)
