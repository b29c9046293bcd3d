"""Whose request it is. A request records who submitted it; a submitter lists and reads only its
own, and another's is answered exactly like a missing one. Compliance, legal and admin read all.

Who submitted is the token (`token:<id>`) or the ingress topic (`ingress`, which carries no
token). The prefix keeps the two apart whatever id a token is given: a token named `ingress`
still does not read the topic's requests. Requests stored before this was recorded have no
submitter: only compliance and admin read them.
"""

from __future__ import annotations

from services.intake.auth import Caller, Role
from services.intake.fingerprint import Fingerprints

INGRESS = "ingress"


def submitter(caller: Caller) -> str:
    """What a request submitted by `caller` records as its submitter."""
    return f"token:{caller.token_id}"


def readable_by(caller: Caller) -> str | None:
    """The submitter whose requests alone `caller` may read; None: every request."""
    return submitter(caller) if caller.role is Role.SUBMITTER else None


def is_resubmission(
    stored_by: str | None,
    stored_fingerprint: str,
    by: str,
    candidates: tuple[str, ...],
    fingerprints: Fingerprints,
) -> bool:
    """Whether a submission with a known request id repeats the stored one (same submitter, same
    body) and so gets the stored answer; otherwise it is a conflict. The submitter is decided
    first and alone: another's request is a conflict whatever the body, so the answer tells
    nothing about that body (no guess at an e-mail can be confirmed by submitting it)."""
    if stored_by is None or stored_by != by:
        return False
    return any(fingerprints.same(stored_fingerprint, c) for c in candidates)
