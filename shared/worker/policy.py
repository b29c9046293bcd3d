"""Deciding, per record, what a request does to it.

This is where legal holds and retention rules are evaluated: a record may be kept (with its
rule or hold cited) instead of erased. The default policy acts on everything; the retention
policy file replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Protocol

from shared.contracts.base import RequestType
from shared.contracts.outcomes import Action
from shared.worker.ports import Decision, Record

ACTION_FOR_REQUEST = {
    RequestType.ERASURE: Action.ERASED,
    RequestType.RESTRICTION: Action.RESTRICTED,
    RequestType.LIFT_RESTRICTION: Action.UNRESTRICTED,
}


class Policy(Protocol):
    def decide(
        self, system: str, request_type: RequestType, records: Sequence[Record], today: date
    ) -> list[Decision]: ...


class ActOnEverything:
    """No exceptions: every record found gets the request's action."""

    def decide(
        self, system: str, request_type: RequestType, records: Sequence[Record], today: date
    ) -> list[Decision]:
        action = ACTION_FOR_REQUEST[request_type]
        return [Decision(record=r, action=action) for r in records]
