"""From a command's plan to what the outcome says of it: counts per category (how each was
found, what was kept and why), the identifiers learnt for the next round of the search, and the
review items for records that may be someone else's. Pure, apart from sealing."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date

from shared.contracts import Action, CategoryOutcome, Retention
from shared.contracts.outcomes import FoundBy, Redirect, ReviewItem
from shared.crypto import IdentifierSeal
from shared.identity import Identities, KnownIdentities, mask
from shared.worker.ports import Decision

_REVIEW_NAMESPACE = uuid.UUID("6f1c1f4e-2b51-4a53-9a3e-726576696577")


def review_id(command_id: uuid.UUID, groups: Sequence[tuple[str, str]]) -> uuid.UUID:
    """Deterministic: a redelivered command reports the same review items."""
    return uuid.uuid5(_REVIEW_NAMESPACE, f"{command_id}:{sorted(groups)}")


def learnt(plan: Sequence[Decision], known: KnownIdentities) -> Identities:
    """What the records certainly the subject's say of whose they are, that was not searched with."""
    owners = [d.record.owner for d in plan if d.action is not Action.IN_REVIEW]
    return Identities().union(*owners).minus(known.all)


def reviews(
    plan: Sequence[Decision], known: KnownIdentities, seal: IdentifierSeal | None
) -> list[ReviewItem]:
    by_review: dict[str, list[Decision]] = defaultdict(list)
    for d in plan:
        if d.action is Action.IN_REVIEW and d.review_id:
            by_review[d.review_id].append(d)
    items = []
    for rid, decisions in sorted(by_review.items()):
        groups = sorted({d.record.group or d.record.key for d in decisions})
        heads = [d.record for d in decisions if d.record.key in groups]
        matched = Identities().union(*(h.matched for h in heads), *(h.variants for h in heads))
        conflicting = Identities().union(*(h.owner.strong() for h in heads)).minus(known.all)
        records: dict[str, int] = defaultdict(int)
        for d in decisions:
            records[d.record.category] += 1
        evidence = {
            "matched": [f"{k}: {mask(k, v)}" for k, v in matched.pairs()],
            "conflicting": [f"{k}: {mask(k, v)}" for k, v in conflicting.pairs()],
        }
        items.append(
            ReviewItem(
                review_id=uuid.UUID(rid),
                groups=groups,
                records=dict(records),
                reason=decisions[0].review_reason,
                matched=sorted({k for k, _ in matched.pairs()}),
                conflicting=sorted({k for k, _ in conflicting.pairs()}),
                evidence=seal.seal_text(json.dumps(evidence)) if seal else None,
            )
        )
    return items


def summarise(
    categories: Sequence[str],
    plan: Sequence[Decision],
    round_: int = 1,
    notes: Mapping[str, str] | None = None,
) -> list[CategoryOutcome]:
    """One entry per category the system holds, so `not_found` is explicit in the report."""
    by_category: dict[str, list[Decision]] = defaultdict(list)
    for decision in plan:
        by_category[decision.record.category].append(decision)
    ordered = list(categories) + sorted(set(by_category) - set(categories))
    notes = notes or {}
    return [_category_outcome(c, by_category.get(c, []), round_, notes.get(c)) for c in ordered]


def _category_outcome(
    category: str, decisions: Sequence[Decision], round_: int, note: str | None
) -> CategoryOutcome:
    counts: dict[Action, int] = defaultdict(int)
    kept: dict[tuple[str | None, str | None, str, date | None], int] = defaultdict(int)
    redirected: dict[str, int] = defaultdict(int)
    found_by: dict[str, int] = defaultdict(int)
    for d in decisions:
        counts[d.action] += 1
        if d.action is Action.RETAINED:
            kept[(d.rule_id, d.hold_reference, d.legal_basis or "", d.retain_until)] += 1
        elif d.action is Action.REDIRECTED:
            redirected[d.controller or "unknown controller"] += 1
        if d.found_by and d.action is not Action.IN_REVIEW:
            found_by[d.found_by] += 1
    return CategoryOutcome(
        category=category,
        found=len(decisions) - counts[Action.IN_REVIEW],
        erased=counts[Action.ERASED],
        anonymised=counts[Action.ANONYMISED],
        restricted=counts[Action.RESTRICTED],
        unrestricted=counts[Action.UNRESTRICTED],
        retained=[
            Retention(count=n, rule_id=rule, hold_reference=hold, legal_basis=basis, retain_until=until)
            for (rule, hold, basis, until), n in sorted(kept.items(), key=str)
        ],
        redirected=[Redirect(count=n, controller=c) for c, n in sorted(redirected.items())],
        in_review=counts[Action.IN_REVIEW],
        found_by=[
            FoundBy(kind=kind, source=source, round=round_, count=n)
            for key, n in sorted(found_by.items())
            for kind, source in [key.split(":", 1)]
        ],
        note=note if counts[Action.ERASED] else None,
    )
