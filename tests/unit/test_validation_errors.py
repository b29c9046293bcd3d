"""What a refusal says back: the field, never what was sent (a key or a value may be someone's
e-mail address). The HTTP API's 422s and the ingress topic's replies share this description."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.intake.limits import RateLimiter
from services.intake.models import SubmitRequest
from shared.codec import describe_error, describe_validation_error

BODY = {"request_id": "r-1", "type": "erasure", "identity_verified": True}


def test_an_unknown_key_is_named_by_where_it_was_found_not_by_itself() -> None:
    subject = {"emails": ["a@example.com"], "jane.doe@example.org": 1}
    with pytest.raises(ValidationError) as caught:
        SubmitRequest.model_validate(BODY | {"subject": subject})
    field, reason = describe_validation_error(caught.value)
    assert field == "subject" and "unknown field" in reason and "jane" not in field + reason


def test_a_message_quoting_the_value_does_not_repeat_it() -> None:
    quoting = "Input tag 'jane.doe@example.org' found using 'kind' does not match any of the expected tags"
    field, reason = describe_error(("subject", "kind"), "union_tag_invalid", quoting, "jane.doe@example.org")
    assert field == "subject.kind" and "jane" not in reason
    plain = "Input should be 'erasure', 'restriction' or 'lift_restriction'"
    assert describe_error(("type",), "enum", plain, "erase")[1] == plain  # nothing of the value in it


def test_waiting_takes_nothing_and_the_buckets_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = RateLimiter(rate=0.001, burst=2)
    assert limiter.wait("a") == 0 and limiter.wait("a") == 0  # asking is free
    assert limiter.allow("a") == 0 and limiter.allow("a") == 0 and limiter.allow("a") > 0
    assert limiter.wait("a") > 0 and limiter.wait("b") == 0
    monkeypatch.setattr(RateLimiter, "MAX_KEYS", 10)
    for n in range(100):
        limiter.allow(f"address-{n}")
    assert len(limiter._buckets) <= 11
    assert limiter.wait("a") > 0  # the throttled address was not the one forgotten
