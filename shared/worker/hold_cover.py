"""Which of a store's records the holds in force cover, from a few store searches rather than
one per hold. Pure: the handler does the searching (shared/worker/handler.py).

A hold covers what its own identifiers find in the store, as a request's identifiers would
(a hold on a customer id covers the records found by e-mail too; a hold on a callee's number
covers the call). A store's search says, of every record it returns, which of the identifiers
it was given found it (`matched`) and of which it holds a variant (`variants`: another
sub-address, a number's line). Searching once with many holds' identifiers together therefore
tells, record by record, which holds' identifiers found it: the same records each hold's own
search would find. A company may have hundreds of holds in force; each erasure searched every
store once per hold."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from shared.identity import KINDS, Identities, Kind
from shared.worker.holds import ActiveHold
from shared.worker.ports import Record

# Identifiers one search takes at most: a search costs a store about as much with 256 as with
# 64 (benchmark with 100 holds: 104 against 114 CPU-ms a request), and a statement's arrays or
# an LDAP filter of that size are still ordinary; a thousand holds take a few searches.
SEARCH_SIZE = 256

Key = tuple[str, str]


def searches(holds: Sequence[ActiveHold], size: int | None = None) -> list[Identities]:
    """The holds' identifiers, in as few sets of at most `size` (SEARCH_SIZE) as their order
    allows (a hold with more has a set of its own). None without holds: no search at all."""
    size = size or SEARCH_SIZE
    sets: list[Identities] = []
    current: set[tuple[Kind, str]] = set()
    for hold in holds:
        pairs = set(hold.identities.pairs())
        if current and len(current | pairs) > size:
            sets.append(_identities(current))
            current = set()
        current |= pairs
    if current:
        sets.append(_identities(current))
    return sets


Found = dict[tuple[Kind, str], dict[Key, str]]


def index(found: Iterable[Record]) -> Found:
    """What the `searches` found, together: identifier → the records (key → category) it found."""
    by_identifier: Found = defaultdict(dict)
    for record in found:
        for pair in (*record.matched.pairs(), *record.variants.pairs()):
            by_identifier[pair][record.key] = record.category
    return by_identifier


def found_by(hold: ActiveHold, found: Found) -> dict[Key, str]:
    """The records (key → category) the hold's own identifiers found: what its own search of
    the store would have found."""
    return {key: cat for pair in hold.identities.pairs() for key, cat in found.get(pair, {}).items()}


def _identities(pairs: set[tuple[Kind, str]]) -> Identities:
    return Identities.normalised({kind: [value for k, value in pairs if k == kind] for kind in KINDS})
