"""Identity expansion, the tracker's part: the identifiers each system learnt from records
certainly the subject's (sealed in its outcome) are gathered, sealed, over a round; when every
system has answered and some are new, the next round searches every system with them too
(shared/worker/matching.py says what may be learnt). The search is bounded: a request searches
with at most MAX_IDENTIFIERS of each kind, in at most `LETHE_TRACKER_MAX_ROUNDS` rounds; past
either, a person decides whether to search on (reviews.EXPANSION_BOUND)."""

from __future__ import annotations

import json

from services.tracker.repository import Loaded
from shared.crypto import IdentifierSeal
from shared.identity import KINDS, MAX_IDENTIFIERS, Identities, KnownIdentities


def _opened(seal: IdentifierSeal, token: str | None) -> Identities:
    """Identifiers a worker normalised and sealed, normalised again (a worker of an earlier
    version may have written a uid in another case) but not bounded: a set may be larger than
    one request may name; the bound is applied here, not by refusing to open it."""
    if token is None:
        return Identities()
    raw: dict[str, list[str]] = json.loads(seal.open_text(token))
    return Identities.lenient(**{kind: raw.get(kind, []) for kind in KINDS})


def prime(loaded: Loaded, seal: IdentifierSeal | None) -> None:
    """Tell the saga how many identifiers this round has learnt so far (kept sealed between events)."""
    if seal is not None and loaded.pending_learnt:
        _count(loaded, seal, _opened(seal, loaded.pending_learnt))


def take(loaded: Loaded, learnt_identifiers: str | None, seal: IdentifierSeal | None) -> None:
    """Add an answer's learnt identifiers to the round's, less those already searched with."""
    if seal is None or not learnt_identifiers or loaded.sealed_identifiers is None:
        return  # a late answer of a request that is over: nothing more is searched
    known = seal.open_known(loaded.sealed_identifiers)
    pending = _opened(seal, loaded.pending_learnt).union(_opened(seal, learnt_identifiers)).minus(known.all)
    loaded.pending_learnt = seal.seal(pending) if pending else None
    _count(loaded, seal, pending)


def _count(loaded: Loaded, seal: IdentifierSeal, pending: Identities) -> None:
    if loaded.sealed_identifiers is None:
        return
    known = seal.open_known(loaded.sealed_identifiers)
    capped = any(
        len(set(getattr(known.learnt, k)) | set(getattr(pending, k))) > MAX_IDENTIFIERS for k in KINDS
    )
    loaded.saga.learn(pending.count(), capped)


def advance(loaded: Loaded, seal: IdentifierSeal | None) -> None:
    """The saga went to its next round: what it searches with from now on includes what was
    learnt (up to the bound of each kind, the earliest first: sorted, for a stable choice)."""
    if seal is None or loaded.sealed_identifiers is None:
        return
    known = seal.open_known(loaded.sealed_identifiers)
    grown = known.learnt.union(_opened(seal, loaded.pending_learnt))
    learnt = Identities(**{k: sorted(getattr(grown, k))[:MAX_IDENTIFIERS] for k in KINDS})
    loaded.sealed_identifiers = seal.seal(KnownIdentities(given=known.given, learnt=learnt))
    loaded.pending_learnt = None
