"""Issue 16, item 7: a submitter reads only its own requests, and a request id another submitter
used is a conflict whatever body is sent with it (item 6: no answer confirms a guess)."""

from __future__ import annotations

import pytest

from services.intake import scope
from services.intake.auth import Caller, Role
from services.intake.fingerprint import Fingerprints
from services.intake.models import SubmitRequest

KEY = "a" * 64
BODY = {
    "request_id": "ticket-1",
    "type": "erasure",
    "identity_verified": True,
    "subject": {"emails": ["alice@example.com"]},
}
ALICE = SubmitRequest.model_validate(BODY)
GUESS = SubmitRequest.model_validate({**BODY, "subject": {"emails": ["bob@example.com"]}})


@pytest.mark.parametrize("role", [Role.COMPLIANCE, Role.LEGAL, Role.ADMIN])
def test_roles_other_than_submitter_read_every_request(role: Role) -> None:
    assert scope.readable_by(Caller("c1", role)) is None


def test_a_submitter_reads_only_what_its_token_submitted() -> None:
    caller = Caller("abc", Role.SUBMITTER)
    assert scope.readable_by(caller) == scope.submitter(caller) == "token:abc"
    assert scope.readable_by(Caller("abd", Role.SUBMITTER)) != scope.submitter(caller)


def test_a_token_named_like_the_ingress_topic_does_not_read_its_requests() -> None:
    assert scope.readable_by(Caller(scope.INGRESS, Role.SUBMITTER)) != scope.INGRESS


def test_only_the_same_submitter_with_the_same_body_resubmits() -> None:
    fingerprints = Fingerprints(KEY)
    stored = fingerprints.of(ALICE)
    mine = "token:mine"
    assert scope.is_resubmission(mine, stored, mine, fingerprints.candidates(ALICE), fingerprints)
    assert not scope.is_resubmission(mine, stored, mine, fingerprints.candidates(GUESS), fingerprints)


@pytest.mark.parametrize("stored_by", ["token:theirs", scope.INGRESS, None])
def test_another_submitters_request_conflicts_whether_or_not_the_body_matches(stored_by: str | None) -> None:
    fingerprints = Fingerprints(KEY)
    stored = fingerprints.of(ALICE)
    for guess in (ALICE, GUESS):  # the right guess is answered like the wrong one
        assert not scope.is_resubmission(
            stored_by, stored, "token:mine", fingerprints.candidates(guess), fingerprints
        )


def test_the_same_request_written_otherwise_is_a_resubmission_and_one_stored_before_too() -> None:
    """Identifiers in another order, a repeated one, a uid's case, a time's offset: the same
    request, which a fingerprint of the body as written took for another (409)."""
    fingerprints = Fingerprints(KEY)
    first = SubmitRequest.model_validate(
        {
            **BODY,
            "subject": {"emails": ["alice@example.com", "al@example.org"], "ldap_uid": "AHartley"},
            "received_at": "2026-03-01T10:00:00+00:00",
        }
    )
    again = SubmitRequest.model_validate(
        {
            **BODY,
            "subject": {
                "emails": ["AL@example.org", "alice@example.com", "Alice@Example.com"],
                "ldap_uid": "ahartley",
            },
            "received_at": "2026-03-01T11:00:00+01:00",
        }
    )
    mine = "token:mine"
    assert scope.is_resubmission(
        mine, fingerprints.of(first), mine, fingerprints.candidates(again), fingerprints
    )
    # Stored by an earlier version (the body as written, keyed): the same body still matches it.
    legacy = fingerprints.keyed(first.legacy_digest())
    assert scope.is_resubmission(mine, legacy, mine, fingerprints.candidates(first), fingerprints)
    later = first.model_copy(update={"received_at": first.received_at.replace(hour=12)})  # type: ignore[union-attr]
    assert not scope.is_resubmission(
        mine, fingerprints.of(first), mine, fingerprints.candidates(later), fingerprints
    )
