"""Deciding what an erasure, restriction or lift does to each record, from the policy file
and the holds in force. Pure: the clock and the holds are inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from shared.contracts import Action, RequestType
from shared.policy.model import OnErasure, PolicyFile, Rule
from shared.worker.policy import ACTION_FOR_REQUEST
from shared.worker.ports import Decision, Record

HOLD_BASIS = "Legal claims: a litigation or regulatory hold is in force; kept while the hold lasts"


class RetentionPolicy:
    def __init__(self, policy: PolicyFile) -> None:
        self.policy = policy
        self.version: str | None = policy.version

    def decide(
        self,
        system: str,
        request_type: RequestType,
        records: Sequence[Record],
        today: date,
        held: Mapping[tuple[str, str], str] | None = None,
    ) -> list[Decision]:
        held = held or {}
        return [self._decide(system, request_type, r, today, held.get(r.key)) for r in records]

    def _decide(
        self, system: str, request_type: RequestType, record: Record, today: date, hold_reference: str | None
    ) -> Decision:
        controller = record.facts.get("processed_for")
        if controller:
            # Processor data: the controller decides; Lethe refers the person to it.
            return Decision(record=record, action=Action.REDIRECTED, controller=str(controller))
        if request_type is not RequestType.ERASURE:  # restriction and its lift keep everything
            return Decision(record=record, action=ACTION_FOR_REQUEST[request_type])
        if hold_reference is not None:
            return Decision(
                record=record,
                action=Action.RETAINED,
                hold_reference=hold_reference,
                legal_basis=HOLD_BASIS,
            )
        rule = self.policy.rule_for(system, record.category)
        if rule is None:  # workers check coverage at start-up; this is a programming error
            raise LookupError(f"no rule for {system}/{record.category}")
        return evaluate(rule, record, today)


def retained_until(rule: Rule, record: Record) -> tuple[bool, date | None]:
    """(retained?, until when), before comparing with today. While `while_fact` holds the
    record is kept, to its date if it has one, else with no end ('while the contract lasts');
    otherwise it is kept to its anchor date (+ period), if it has one."""
    anchor = record.dates.get(rule.anchor) if rule.anchor else None
    until = None
    if anchor is not None:
        until = rule.retain_for.after(anchor) if rule.retain_for else anchor
    if rule.while_fact is not None and record.facts.get(rule.while_fact):
        return True, until
    return until is not None, until


def evaluate(rule: Rule, record: Record, today: date) -> Decision:
    if rule.on_erasure is OnErasure.ERASE:
        return Decision(record=record, action=Action.ERASED, rule_id=rule.id)
    if rule.on_erasure is OnErasure.ANONYMISE:
        return Decision(
            record=record,
            action=Action.ANONYMISED,
            rule_id=rule.id,
            legal_basis=rule.legal_basis,
            keep_fields=rule.keep_fields,
        )
    retained, until = retained_until(rule, record)
    if retained and (until is None or today < until):
        return Decision(
            record=record,
            action=Action.RETAINED,
            rule_id=rule.id,
            legal_basis=f"{rule.legal_basis} (Art. {rule.gdpr_article})",
            retain_until=until,
            strip_fields=rule.strip_fields,
        )
    return Decision(record=record, action=Action.ERASED, rule_id=rule.id)
