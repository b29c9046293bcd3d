"""Which of the subject's records the holds in force cover, without a store search per hold.
Pure: the handler gives it what the stores found (shared/worker/handler.py).

A hold covers what its own identifiers find in the store, as a request's identifiers would
(a hold on a customer id covers the records found by e-mail too; a hold on a callee's number
covers the call). A company may have hundreds of holds in force, and each erasure searched
every store once per hold. Two ways, each covering what those searches covered (the first,
more only where a store's search lets through less than the matching that decides after it:
a record is then kept rather than erased):

- A record the subject's search found carries every identifier on it a search may match
  (`Record.searchable`): a hold's search would have found it exactly when the hold's
  identifiers match those (shared/worker/matching.py's `match`, which decides for every
  search). `HoldIndex` finds the holds that may, by identifier, mailbox or line, and `match`
  decides. No search at all.
- A record read back from an earlier command's journal (a deferred erasure's, no longer found
  by the subject's identifiers) carries none: for it the store is searched with many holds'
  identifiers together (`searches`). A search says of each record which of the identifiers
  it was given found it, or of which it holds a variant, so the records tell which hold's
  identifiers found them (`covered_by_search`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from shared.identity import KINDS, Identities, Kind, Written, line, mailbox
from shared.worker.holds import ActiveHold
from shared.worker.matching import match
from shared.worker.ports import Record

# Identifiers one search takes at most: a search costs a store about as much with 256 as with
# 64 (benchmark with 100 holds: 104 against 114 CPU-ms a request), and a statement's arrays or
# an LDAP filter of that size are still ordinary; a thousand holds take a few searches.
SEARCH_SIZE = 256

Key = tuple[str, str]


class HoldIndex:
    """The holds in force, by what could make a record match them."""

    def __init__(self, holds: Sequence[ActiveHold]) -> None:
        self.holds = list(holds)
        self._near: dict[tuple[str, str], set[int]] = defaultdict(set)
        for n, hold in enumerate(self.holds):
            for pair in hold.identities.pairs():
                self._near[_probe(pair)].add(n)

    @classmethod
    def of(cls, holds: Sequence[ActiveHold]) -> HoldIndex:
        """The index of these holds, made once while they stay the same: the holds view gives
        every command the same holds while none changes (shared/worker/holds.py), and
        comparing the same objects costs a pointer each."""
        global _last
        key = tuple(holds)
        if _last is None or _last[0] != key:
            _last = (key, cls(holds))
        return _last[1]

    def covering(self, searchable: Identities) -> list[ActiveHold]:
        """The holds (in order) whose own search would find a record holding `searchable`."""
        near = {n for pair in searchable.pairs() for n in self._near.get(_probe(pair), ())}
        # A customer id in another case is one of match's variants, as a store search finds it.
        return [self.holds[n] for n in sorted(near) if any(match(searchable, self.holds[n].identities))]


_last: tuple[tuple[ActiveHold, ...], HoldIndex] | None = None


def _probe(pair: tuple[Kind, str]) -> tuple[str, str]:
    """What two identifiers that may match share: an e-mail's mailbox (a sub-address matches
    as a variant), a number's line (a switchboard's extensions), else the identifier."""
    kind, value = pair
    if kind == "emails":
        return ("mailbox", mailbox(value))
    if kind == "phones":
        return ("line", line(value))
    if kind == "customer_ids":
        return ("customer_id", value.casefold())
    return pair


def written_on(record: Record, holds: Sequence[ActiveHold]) -> list[ActiveHold]:
    """The holds one of whose identifiers is written in a value on the record that cannot be
    read (`07700 900461 / 01632 960000` under a hold on the first number): its search finds
    the record, but no identifier read off the record matches it. A hold errs on keeping."""
    if not record.unread_texts:
        return []
    written = Written.of(record.unread_texts)  # read once for all the holds
    return [hold for hold in holds if written.names(hold.identities)]


def same_id(one: Identities, other: Identities) -> bool:
    """Whether the two share a customer id written in another case: Legal types `c-1001` for
    the billing system's `C-1001`. A hold errs on keeping (an erasure stays exact: a system
    may tell `ab12` from `AB12`)."""
    return bool({c.casefold() for c in one.customer_ids} & {c.casefold() for c in other.customer_ids})


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


def covered_by_search(holds: Sequence[ActiveHold], found: Sequence[Record]) -> dict[Key, list[ActiveHold]]:
    """Record key → the holds (in order) whose own identifiers found it, of what the
    `searches` found together: worked out once for all the records that need it."""
    by_identifier = index(found)
    unread = [(r.key, r.category, written_on(r, holds)) for r in found if r.unread_texts]
    covered: dict[Key, list[ActiveHold]] = defaultdict(list)
    for hold in holds:
        written = {key: category for key, category, on in unread if hold in on}
        for key in found_by(hold, by_identifier) | written:
            covered[key].append(hold)
    return covered


def halves(identities: Identities) -> list[Identities]:
    """The identifiers in two searches (of a search the store found too broad)."""
    pairs = sorted(identities.pairs())
    return [_identities(set(pairs[: len(pairs) // 2])), _identities(set(pairs[len(pairs) // 2 :]))]


def _identities(pairs: set[tuple[Kind, str]]) -> Identities:
    return Identities.normalised({kind: [value for k, value in pairs if k == kind] for kind in KINDS})
