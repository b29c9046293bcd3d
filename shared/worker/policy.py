"""What the worker runtime asks of a policy: a decision per record.

`shared.policy.evaluate.RetentionPolicy` is the real one (rules and holds); `ActOnEverything`
gives every record the request's action, for adapter tests that are about the store alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    @property
    def version(self) -> str | None: ...

    def decide(
        self,
        system: str,
        request_type: RequestType,
        records: Sequence[Record],
        today: date,
        held: Mapping[tuple[str, str], str] | None = None,
    ) -> list[Decision]:
        """`held` maps a record's key to the case reference of a hold covering it."""
        ...


class ActOnEverything:
    version = None

    def decide(
        self,
        system: str,
        request_type: RequestType,
        records: Sequence[Record],
        today: date,
        held: Mapping[tuple[str, str], str] | None = None,
    ) -> list[Decision]:
        action = ACTION_FOR_REQUEST[request_type]
        return [Decision(record=r, action=action) for r in records]
