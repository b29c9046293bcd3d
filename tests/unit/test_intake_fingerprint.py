"""Issue 16, item 6: the idempotency fingerprint is keyed, so a stored one confirms nothing to
whoever reads the table without the key."""

from __future__ import annotations

import hashlib
import hmac

from services.intake.fingerprint import Fingerprints, is_keyed
from services.intake.models import SubmitRequest
from shared.crypto import subject_ref

KEY = "a" * 64
BODY = {
    "request_id": "ticket-1",
    "type": "erasure",
    "identity_verified": True,
    "subject": {"emails": ["alice@example.com"]},
}
ALICE = SubmitRequest.model_validate(BODY)
GUESS = SubmitRequest.model_validate({**BODY, "subject": {"emails": ["bob@example.com"]}})


def test_a_stored_fingerprint_cannot_be_recomputed_without_the_key() -> None:
    stored = Fingerprints(KEY).of(ALICE)
    # What an earlier version stored, and what anyone could compute from a guessed body.
    unkeyed = hashlib.sha256(ALICE.model_dump_json(exclude_none=True).encode()).hexdigest()
    assert unkeyed not in stored and ALICE.digest() not in stored and ALICE.legacy_digest() == unkeyed
    assert stored != Fingerprints("b" * 64).of(ALICE)  # it depends on the key
    assert stored == Fingerprints(KEY).of(ALICE)  # and on nothing else


def test_the_fingerprint_key_is_derived_for_this_use_alone() -> None:
    stored = Fingerprints(KEY).of(ALICE).removeprefix("k1:")
    # Not the pseudonym key itself: a fingerprint is no subject reference.
    assert stored != hmac.new(KEY.encode(), ALICE.digest().encode(), hashlib.sha256).hexdigest()
    assert stored[:32] not in subject_ref(KEY, ALICE.subject.identities())


def test_a_fingerprint_stored_unkeyed_is_still_recognised_and_keyed_once() -> None:
    fingerprints = Fingerprints(KEY)
    legacy = ALICE.legacy_digest()
    assert not is_keyed(legacy) and is_keyed(fingerprints.rekeyed(legacy))
    keyed = fingerprints.keyed(legacy)
    assert fingerprints.rekeyed(legacy) == keyed == fingerprints.candidates(ALICE)[1]
    assert fingerprints.rekeyed(fingerprints.rekeyed(legacy)) == keyed
    assert any(fingerprints.same(legacy, c) for c in fingerprints.candidates(ALICE))
    assert not any(fingerprints.same(legacy, c) for c in fingerprints.candidates(GUESS))
