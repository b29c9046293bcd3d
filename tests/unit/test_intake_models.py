from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.intake.fingerprint import Fingerprints
from services.intake.models import SubmitRequest
from shared.deadlines import add_months

BODY = {
    "request_id": "ticket-1",
    "type": "erasure",
    "identity_verified": True,
    "subject": {"emails": ["a@example.com"]},
}


def fields(exc: ValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in exc.errors()]


def test_identity_must_be_verified() -> None:
    with pytest.raises(ValidationError) as info:
        SubmitRequest.model_validate({**BODY, "identity_verified": False})
    assert fields(info.value) == ["identity_verified"]


def test_subject_needs_an_identifier() -> None:
    with pytest.raises(ValidationError) as info:
        SubmitRequest.model_validate({**BODY, "subject": {}})
    assert "at least one" in str(info.value)


def test_request_id_must_be_opaque() -> None:
    with pytest.raises(ValidationError) as info:
        SubmitRequest.model_validate({**BODY, "request_id": "alice@example.com"})
    assert fields(info.value) == ["request_id"]


def test_received_at_cannot_be_in_the_future() -> None:
    with pytest.raises(ValidationError):
        SubmitRequest.model_validate(
            {**BODY, "received_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
        )


def test_same_person_spelled_differently_has_the_same_fingerprint() -> None:
    a = SubmitRequest.model_validate({**BODY, "subject": {"emails": ["A@Example.com"]}})
    b = SubmitRequest.model_validate({**BODY, "subject": {"emails": [" a@example.com"]}})
    c = SubmitRequest.model_validate({**BODY, "type": "restriction"})
    fingerprints = Fingerprints("k" * 64)
    assert fingerprints.of(a) == fingerprints.of(b) != fingerprints.of(c)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2026, 1, 31, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC)),
        (datetime(2026, 12, 15, tzinfo=UTC), datetime(2027, 1, 15, tzinfo=UTC)),
        (datetime(2028, 1, 30, tzinfo=UTC), datetime(2028, 2, 29, tzinfo=UTC)),
    ],
)
def test_one_month_deadline_clamps_to_month_end(start: datetime, end: datetime) -> None:
    assert add_months(start, 1) == end
