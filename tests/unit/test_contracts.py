import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from shared.codec import PoisonMessage, decode, encode
from shared.contracts import SUBJECT_COMMAND, EraseSubject, OutcomeReported, RequestAccepted
from shared.crypto import IdentifierSeal, IdentifierSealError, new_identifier_key, subject_ref
from shared.identity import Identities

SEAL = IdentifierSeal(new_identifier_key())
ALICE = Identities(emails=["alice@example.co.uk"], phones=["07700 900123"], customer_ids=["C-1"])
REF = subject_ref("k", ALICE)


def test_command_round_trips_through_the_codec() -> None:
    command = EraseSubject(
        request_id="r-1", system="billing", subject_ref=REF, sealed_identifiers=SEAL.seal(ALICE)
    )
    decoded = decode(encode(command), SUBJECT_COMMAND)
    assert decoded == command
    assert SEAL.open(decoded.sealed_identifiers) == ALICE


def test_command_carries_no_plaintext_identifiers() -> None:
    wire = encode(
        EraseSubject(request_id="r-1", system="billing", subject_ref=REF, sealed_identifiers=SEAL.seal(ALICE))
    ).decode()
    for value in ("alice@example.co.uk", "+447700900123", "7700900123", "C-1"):
        assert value not in wire


def test_subject_ref_is_stable_and_keyed() -> None:
    same = Identities(emails=["ALICE@example.co.uk"], phones=["+447700900123"], customer_ids=["C-1"])
    assert subject_ref("k", same) == REF
    assert subject_ref("other key", same) != REF


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", "(value)"),
        (b"[1, 2]", "(value)"),
        (json.dumps({"schema_version": 2}).encode(), "schema_version"),
        (
            json.dumps(
                {
                    "schema_version": 1,
                    "command": "erase_subject",
                    "request_id": "r",
                    "system": "billing",
                    "subject_ref": "nope",
                    "sealed_identifiers": "x",
                }
            ).encode(),
            "erase_subject.subject_ref",
        ),
        (json.dumps({"schema_version": 1, "command": "launch_rocket"}).encode(), "(message)"),
        # Not caught, these stopped the consumer on the same record after every restart (a
        # 2 KB one on the holds topic stopped every worker).
        (b'{"schema_version": 1, "x": ' + b"[" * 5000 + b"}", "(value)"),
        (b'{"schema_version": 1, "x": ' + b"9" * 5000 + b"}", "(value)"),
        (b"\xff\xfe", "(value)"),
    ],
)
def test_poison_messages_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(PoisonMessage) as info:
        decode(raw, SUBJECT_COMMAND)
    assert info.value.field == field


def _erase(**changed: object) -> bytes:
    body = json.loads(
        encode(
            EraseSubject(
                request_id="r", system="crm", subject_ref=subject_ref("k", ALICE), sealed_identifiers="x"
            )
        )
    )
    return json.dumps(body | changed).encode()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        # Valid but for the version, or for a number past what JSON is read with: the one-pass
        # parse must refuse what the step-by-step checks refuse, and they name the field.
        (_erase(schema_version=2), "schema_version"),
        (_erase(schema_version="1"), "schema_version"),
        (_erase(schema_version=None).replace(b'"schema_version": null, ', b""), "schema_version"),
        (_erase(attempt=0).replace(b'"attempt": 0', b'"attempt": ' + b"9" * 5000), "(value)"),
    ],
)
def test_a_message_valid_in_all_but_one_thing_is_refused_for_it(raw: bytes, field: str) -> None:
    with pytest.raises(PoisonMessage) as info:
        decode(raw, SUBJECT_COMMAND)
    assert info.value.field == field


def test_one_pass_decoding_reads_what_step_by_step_reads() -> None:
    raw = _erase(attempt=3, round=2)
    assert decode(raw, SUBJECT_COMMAND) == SUBJECT_COMMAND.validate_python(json.loads(raw))


def test_sealed_identifiers_need_the_key() -> None:
    other = IdentifierSeal(new_identifier_key())
    with pytest.raises(IdentifierSealError):
        other.open(SEAL.seal(ALICE))


def test_identifiers_an_earlier_version_sealed_open_as_sealed_where_they_no_longer_read() -> None:
    """An address an earlier version read as one (`alice@x,ben@y`, now a list) sealed in a
    hold: refused, the hold could not be opened, and every erasure waited for it."""
    for sealed in (
        {"emails": ["alice@example.com,ben@example.org", "Carol@Example.com"]},
        {"given": {"emails": ["alice@example.com,ben@example.org"]}, "learnt": {"phones": ["07700 900461"]}},
    ):
        opened = SEAL.open_known(SEAL.seal_text(json.dumps(sealed))).all
        assert "alice@example.com,ben@example.org" in opened.emails
        assert {v for _, v in opened.pairs()} & {"carol@example.com", "+447700900461"}  # the rest as now
    for broken in ({"emails": "x"}, {"names": ["x"]}, {"emails": [1]}, ["x"], {"given": {}, "other": {}}):
        with pytest.raises(IdentifierSealError):
            SEAL.open(SEAL.seal_text(json.dumps(broken)))


def test_events_require_timezone_aware_times() -> None:
    with pytest.raises(ValueError):
        OutcomeReported(
            request_id="r",
            system="crm",
            command_id=uuid4(),
            attempt=1,
            status="done",
            started_at=datetime(2026, 1, 1),
            finished_at=datetime(2026, 1, 1),
        )


def test_accepted_event_has_message_id_and_version() -> None:
    event = RequestAccepted(
        request_id="r",
        request_type="erasure",
        subject_ref=REF,  # type: ignore[arg-type]
        systems=["crm"],
        received_at=datetime.now(UTC),
        deadline=datetime.now(UTC),
        sealed_identifiers="x",
    )
    body = json.loads(encode(event))
    assert body["schema_version"] == 1 and body["message_id"] and body["occurred_at"]
