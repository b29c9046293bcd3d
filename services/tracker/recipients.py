"""A request's notices to recipients (Art. 19), as plain data inside its saga: planned once the
systems have answered (or, for a lift, when it is accepted, before its commands go out), then
changed only by what intake reports of their delivery. No I/O here: the saga's rules stay
testable. The planner (the register's rules, shared/recipients/plan.py) is installed once at
start-up: the saga is saved on a dozen paths (outcomes, timeouts, reviews, retries, recovery)
and each may be the one that completes a request."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.contracts.base import RequestType
from shared.contracts.notices import NoticeState, NoticeUpdated, RecipientNotice
from shared.contracts.outcomes import CategoryOutcome
from shared.crypto import IdentifierSeal
from shared.recipients.plan import Planner

_installed: tuple[Planner, IdentifierSeal | None] = (Planner(), None)


def install(planner: Planner, seal: IdentifierSeal | None) -> None:
    """At start-up: the register's rules, and the key that opens what a notice may carry."""
    global _installed
    _installed = (planner, seal)


def installed() -> Planner:
    return _installed[0]


def installed_seal() -> IdentifierSeal | None:
    return _installed[1]


@dataclass
class Recipients:
    notices: dict[str, RecipientNotice] = field(default_factory=dict)
    planned: bool = False  # the plan is made once per request, even when it names nobody
    held: bool = False  # a lift's commands wait for its webhook notices to be settled
    new: list[RecipientNotice] = field(default_factory=list)  # planned since loaded: to send
    release_now: bool = False  # the held lift's commands go out with this change

    @property
    def awaited(self) -> bool:
        return any(n.awaited for n in self.notices.values())

    def acknowledged_times(self) -> list[datetime]:
        return [n.acknowledged_at for n in self.notices.values() if n.must_acknowledge and n.acknowledged_at]

    def unsettled(self) -> list[RecipientNotice]:
        """Notices whose last word from intake may have been lost with a broker: still pending,
        or still awaiting a required acknowledgement. Sent again, intake stores none twice and
        reports once more what became of one it has."""
        return [n for n in self.notices.values() if n.state is NoticeState.PENDING or n.awaited]

    def plan_after(
        self,
        request_id: str,
        request_type: RequestType,
        outcomes: Iterable[tuple[str, CategoryOutcome]],
        at: datetime,
    ) -> list[RecipientNotice]:
        if self.planned or request_type is RequestType.LIFT_RESTRICTION:
            return []
        return self._add(installed().after_outcomes(request_id, request_type, outcomes, at))

    def plan_lift(
        self, request_id: str, systems: Iterable[str], restricted: Iterable[tuple[str, str]], at: datetime
    ) -> list[RecipientNotice]:
        """A lift's notices, before it takes effect: its commands are held until every webhook
        notice is delivered or given up (manual tasks do not hold it: a person may take days,
        and the person's request has a deadline)."""
        if self.planned:
            return []
        added = self._add(installed().before_lift(request_id, systems, restricted, at))
        self.held = True
        return added

    def _add(self, notices: list[RecipientNotice]) -> list[RecipientNotice]:
        self.planned = True
        for notice in notices:
            self.notices[notice.recipient_id] = notice
        self.new += notices
        return notices

    def release(self) -> bool:
        """Whether a held lift may go now (no webhook notice is still being tried): then it is
        no longer held, and its commands go out with this change."""
        if not self.held or any(
            n.channel == "webhook" and not n.state.settled for n in self.notices.values()
        ):
            return False
        self.held, self.release_now = False, True
        return True

    def update(self, event: NoticeUpdated) -> RecipientNotice | None:
        """Take intake's report on a notice; None if it changes nothing (a repeat, an older try,
        anything after the acknowledgement)."""
        notice = self.notices.get(event.recipient_id)
        if notice is None or notice.notice_id != event.notice_id:
            return None
        if notice.state is NoticeState.ACKNOWLEDGED or event.attempts < notice.attempts:
            return None
        changes: dict[str, Any] = {"state": event.state, "attempts": event.attempts, "error": event.error}
        if event.state in (NoticeState.DELIVERED, NoticeState.ACKNOWLEDGED) and notice.delivered_at is None:
            changes["delivered_at"] = event.at if event.acknowledged_via != "compliance" else None
        if event.state is NoticeState.ACKNOWLEDGED:
            changes |= {
                "acknowledged_at": event.at,
                "acknowledged_via": event.acknowledged_via,
                "acknowledged_by": event.closed_by,
                "error": None,
            }
        updated = notice.model_copy(update=changes)
        if updated == notice:
            return None
        self.notices[event.recipient_id] = updated
        return updated

    def to_json(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "held": self.held,
            "notices": [n.model_dump(mode="json") for n in self.notices.values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Recipients:
        if not data:
            return cls()
        notices = [RecipientNotice.model_validate(n) for n in data.get("notices", [])]
        return cls({n.recipient_id: n for n in notices}, data.get("planned", False), data.get("held", False))
