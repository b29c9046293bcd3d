"""Whose records these are: the rules that decide, for every record a store found, whether it is
certainly the subject's (acted on, and its identifiers learnt for the next round), or ambiguous
(left alone and put to a person). Pure: no I/O, unit-tested on its own.

- A record found through a strong identifier (customer id, e-mail, directory uid), given or
  learnt, is the subject's (a second account under another customer id, found by the
  subject's address, is theirs too: strong identifiers name one person).
- A record found only through a phone number the request gave is ambiguous: a number is
  shared (a household landline, a switchboard, a family mobile). If it carries a strong
  identifier the subject is not known by, or one that cannot be read, it may be someone
  else's (`shared_phone`); if it carries none, nothing on it but the number says whose it is
  (`phone_only`: a household member's contact with his name and the landline). Two exceptions:
  processor data (a record a store holds for another controller), of which Lethe changes
  nothing and refers the person to its controller, who decides whose it is; and a restriction,
  which a lift undoes (`phone_alone`; not a lift, which could undo another's restriction).
- A record a store's search returned for a value that cannot be read (`07700 900461 or 900462`,
  two addresses in one field) with one of the subject's identifiers written in it is neither
  acted on nor dropped: ambiguous (`unreadable_identifier`), since it may well be theirs.
- A record found only through a phone number *learnt* from another record is ambiguous:
  nobody vouched for that number as the subject's, and two hops from the request a shared
  number reaches strangers (a household's landline learnt from one member's account finds the
  other member's records). It is shown to a reviewer, never erased on its own.
- A record whose e-mail is a sub-address of the subject's (or the reverse: `alice+news@` for
  `alice@`) may or may not be the same mailbox: ambiguous. So is one whose customer id is the
  subject's in another case (`c-1002`): a system may tell them apart.
- A record with a switchboard's main number where the subject gave one of its extensions, or
  the reverse, may be the subject's or a colleague's: ambiguous (two different extensions are
  two lines, and do not match at all).
- One identifier finding more top-level records than `match_limit` in a store (a shared
  mailbox, a company switchboard): all it found only through it is ambiguous.
Only records certainly the subject's teach identifiers for the next round."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared.contracts.outcomes import ReviewReason
from shared.identity import STRONG, Identities, Kind, KnownIdentities, extension, line, mailbox, written_in
from shared.worker.ports import Record


@dataclass(frozen=True)
class FoundBy:
    """How a record was found: the strongest identifier that found it, and where that came from."""

    kind: Kind
    source: Literal["given", "learnt"]


@dataclass(frozen=True)
class Ambiguous:
    """One decision for a person: the top-level records (an account, with everything under
    it) it covers, why they are in doubt, what found them and what speaks against them."""

    groups: tuple[tuple[str, str], ...]
    records: tuple[Record, ...]
    reason: ReviewReason
    matched: Identities  # which of the subject's identifiers found them
    conflicting: Identities  # strong identifiers on them the subject is not known by


@dataclass
class Classified:
    certain: list[Record] = field(default_factory=list)
    found_by: dict[tuple[str, str], FoundBy] = field(default_factory=dict)
    ambiguous: list[Ambiguous] = field(default_factory=list)
    learnt: Identities = field(default_factory=Identities)


def match(candidate: Identities, known: Identities) -> tuple[Identities, Identities]:
    """(the known identifiers equal to one of the candidate's, the known identifiers the
    candidate holds a variant of: another sub-address of an e-mail, a number's line where the
    other has an extension on it, or a customer id in another case)."""
    matched = candidate.intersection(known)
    boxes = {mailbox(e) for e in candidate.emails}
    variants = [e for e in known.emails if mailbox(e) in boxes and e not in matched.emails]
    lines = [p for p in known.phones if p not in matched.phones and _same_line(p, candidate.phones)]
    folded = {c.casefold() for c in candidate.customer_ids}
    ids = [c for c in known.customer_ids if c.casefold() in folded and c not in matched.customer_ids]
    return matched, Identities.normalised({"emails": variants, "phones": lines, "customer_ids": ids})


def unread_match(unreadable: Sequence[Kind], texts: Iterable[str], identities: Identities) -> bool:
    """A candidate nothing matched, with a value of a searched kind that cannot be read, in
    which one of the identifiers searched for is written (`07700 900461 or 900462`): a person
    decides (`classify`), whatever else is on it. One that only shares the store's coarse key
    (another number ending in the same digits) is a stranger's, and not shown to the subject's
    reviewer."""
    searched = {kind for kind, _ in identities.pairs()}
    return bool(searched & set(unreadable)) and written_in(texts, identities)


def _same_line(phone: str, others: Iterable[str]) -> bool:
    """Whether one of `others` may be `phone`'s line written otherwise: with an extension where
    `phone` has none or the reverse (a switchboard's main number), or with the same extension
    written with other leading zeros (x012, x12). Two different extensions are two lines."""
    own = extension(phone).lstrip("0")
    return any(
        line(o) == line(phone)
        and o != phone
        and (not own or not extension(o) or extension(o).lstrip("0") == own)
        for o in others
    )


def classify(
    records: Sequence[Record], known: KnownIdentities, match_limit: int = 25, phone_alone: bool = False
) -> Classified:
    """`phone_alone`: a record with nothing on it but a number the request gave is the
    subject's (a restriction, which a lift undoes; not an erasure, nor a lift, which could
    undo another person's restriction)."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in records:
        groups[record.group or record.key].append(record)
    heads = {key: next((r for r in members if r.key == key), members[0]) for key, members in groups.items()}
    flooded = _flooding(heads.values(), match_limit)
    result = Classified()
    floods: list[tuple[str, str]] = []
    for key, members in groups.items():
        head = heads[key]
        verdict = _verdict(head, known, flooded, phone_alone)
        if isinstance(verdict, FoundBy):
            result.certain.extend(members)
            result.found_by.update((r.key, verdict) for r in members)
            result.learnt = result.learnt.union(head.owner)
        elif verdict == "too_many_matches":
            floods.append(key)  # one decision for all an over-broad identifier found
        else:
            conflicting = head.owner.strong().minus(known.all)
            result.ambiguous.append(Ambiguous((key,), tuple(members), verdict, head.matched, conflicting))
    if floods:
        found = [r for key in floods for r in groups[key]]
        matched = Identities().union(*(heads[k].matched for k in floods)) if floods else Identities()
        result.ambiguous.append(
            Ambiguous(tuple(floods), tuple(found), "too_many_matches", matched, Identities())
        )
    result.learnt = result.learnt.minus(known.all)
    return result


def _verdict(
    head: Record, known: KnownIdentities, flooded: Identities, phone_alone: bool
) -> FoundBy | ReviewReason:
    for source, identities in (("given", known.given), ("learnt", known.learnt)):
        for kind in STRONG:
            hits = set(getattr(head.matched, kind)) & set(getattr(identities, kind))
            if hits - set(getattr(flooded, kind)):
                return FoundBy(kind, source)  # type: ignore[arg-type]
    if set(head.matched.union(head.variants).pairs()) & set(flooded.pairs()):
        return "too_many_matches"
    if not head.matched and not head.variants:
        return "unreadable_identifier"  # the search found it by a value that cannot be read
    if not head.matched and head.variants.emails:
        return "mailbox_variant"
    if not head.matched and head.variants.customer_ids:  # c-1002 for C-1002: the same account,
        return "id_variant"  # or another in a system that tells them apart
    if not head.matched and head.variants.phones:
        return "shared_phone"  # a switchboard's main number and one of its extensions
    if set(head.matched.phones) & set(known.given.phones):
        if head.owner.strong().minus(known.all) or set(head.unreadable) & set(STRONG):
            return "shared_phone"
        if phone_alone or head.facts.get("processed_for"):  # undone by a lift; or not changed at
            return FoundBy("phones", "given")  # all, referred to its controller, who decides
        return "phone_only"
    return "learnt_phone"


def _flooding(heads: Iterable[Record], limit: int) -> Identities:
    """Identifiers that found more top-level records than the limit."""
    counts: dict[tuple[Kind, str], int] = defaultdict(int)
    for head in heads:  # a variant floods as a match does: a switchboard's extensions, a team's sub-addresses
        for pair in head.matched.union(head.variants).pairs():
            counts[pair] += 1
    flooded: dict[str, list[str]] = defaultdict(list)
    for (kind, value), n in counts.items():
        if n > limit:
            flooded[kind].append(value)
    return Identities.normalised(flooded)
