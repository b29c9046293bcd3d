"""The saga of one request, as plain data: which systems were asked, what each answered in
each round of the identity search, what waits for a person, what that makes of the request,
and the audit events each change produces. No I/O here, so the rules are unit-tested directly."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from services.tracker.recipients import Recipients
from services.tracker.reviews import APPLIED, EXPANSION_BOUND, Review
from services.tracker.slots import SystemSlot, total
from shared.contracts import OutcomeReported, Report, RequestStatus, RequestType, SystemState
from shared.contracts.notices import NoticeUpdated
from shared.contracts.report import Extension, ReviewDecision, ReviewState

_ROUND_COMMANDS = uuid.UUID("6f1c1f4e-2b51-4a53-9a3e-726f756e6473")
_RETRIES = uuid.UUID("0c4a5b8e-7d0f-4f39-9a57-726574726965")


@dataclass(frozen=True)
class Timeouts:
    """How long a system may stay silent: `first` for the first try, multiplied by `backoff`
    for each further try; after `attempts` tries the system is failed."""

    first: timedelta
    attempts: int
    backoff: float = 2.0

    def wait(self, attempt: int) -> timedelta:
        return self.first * (self.backoff ** (attempt - 1))


def round_command_id(request_id: str, system: str, round_: int) -> UUID:
    """Deterministic: a round re-sent after a broker loss is the same command."""
    return uuid.uuid5(_ROUND_COMMANDS, f"{request_id}/{system}/{round_}")


def retry_command_id(replaced: UUID) -> UUID:
    """An operator's retry's command, derived from the one it replaces: the commands a slot
    issued are then known from its current one (`issued`), with nothing more stored."""
    return uuid.uuid5(_RETRIES, str(replaced))


def issued(slot: SystemSlot, command_id: UUID) -> bool:
    """Whether the slot issued this command in its round: its current one, or one a retry
    replaced (each retry is one more attempt, so there were fewer retries than attempts). An
    answer to anything else (a producer that made up an id) is no answer."""
    candidate = command_id
    for _ in range(slot.attempts):
        if candidate == slot.command_id:
            return True
        candidate = retry_command_id(candidate)
    return candidate == slot.command_id


@dataclass
class Saga:
    request_id: str
    request_type: RequestType
    subject_ref: str
    received_at: datetime
    deadline: datetime
    trace_id: str | None
    slots: dict[str, SystemSlot] = field(default_factory=dict)
    completed_at: datetime | None = None
    extension: Extension | None = None
    audit: list[tuple[datetime, str, dict[str, Any]]] = field(default_factory=list)
    round: int = 1
    max_rounds: int = 3
    # New identifiers learnt in this round (the store opens and counts them), and whether some
    # were left out for being more than a request may search with.
    learnt_waiting: int = 0
    learnt_capped: bool = False
    reviews: dict[UUID, Review] = field(default_factory=dict)
    recipients: Recipients = field(default_factory=Recipients)

    def note(self, at: datetime, kind: str, **detail: Any) -> None:
        """An audit event for the store to chain; details are ids and counts, never identifiers."""
        self.audit.append((at, kind, detail))

    def accepts(self, outcome: OutcomeReported) -> bool:
        """Whether `record` would take this answer as its system's answer of this round."""
        slot = self.slots.get(outcome.system)
        if slot is None or outcome.resume_of is not None or outcome.review_id is not None:
            return False
        if outcome.round != self.round:
            return False  # a late or repeated answer of an earlier round
        # The same command answered after its system was failed (for silence, or by a failure
        # report followed by a replay from the dead-letter topic): the work was done; take it.
        late = (
            slot.state is SystemState.FAILED
            and outcome.command_id == slot.command_id
            and (not slot.answers() or slot.answers()[-1].round != outcome.round or outcome.status == "done")
        )
        if slot.state is SystemState.DISPATCHED:
            # After an operator's retry, the replaced command's failure (its worker giving up
            # late) is not the retry's answer; its success would be (the work was done).
            return outcome.command_id == slot.command_id or (
                outcome.status == "done" and issued(slot, outcome.command_id)
            )
        return late

    def record(self, outcome: OutcomeReported) -> bool:
        """Take a system's answer; False if it changes nothing. Duplicates change nothing; an
        answer that arrives after the system was failed for silence is taken, since the work
        was done; a deferred erasure's outcome, or a reviewer's erasure's, is added to the
        history without reopening."""
        slot = self.slots.get(outcome.system)
        if slot is None:
            return False
        if outcome.resume_of is not None:
            return self._deferred(slot, outcome)
        if outcome.review_id is not None:
            return self._carried_out(outcome)
        if not self.accepts(outcome):
            return False
        was_final = self.status.is_final
        late = slot.state is SystemState.FAILED
        slot.state = SystemState.DONE if outcome.status == "done" else SystemState.FAILED
        slot.answered_at = outcome.finished_at
        if outcome.round == 1:
            slot.outcome = outcome
        else:
            slot.rounds = [r for r in slot.rounds if r.round != outcome.round] + [outcome]
        slot.error = outcome.error
        self.note(
            outcome.finished_at,
            "outcome_recorded",
            system=slot.system,
            status=outcome.status,
            attempt=outcome.attempt,
            round=outcome.round,
            found=total(outcome.categories, "found"),
            erased=total(outcome.categories, "erased"),
            in_review=total(outcome.categories, "in_review"),
            late=late,
        )
        for item in outcome.reviews:
            if item.review_id not in self.reviews:
                self.reviews[item.review_id] = Review.of(
                    slot.system, item, outcome.round, outcome.finished_at
                )
                self.note(
                    outcome.finished_at,
                    "review_opened",
                    review_id=str(item.review_id),
                    system=slot.system,
                    reason=item.reason,
                    records=sum(item.records.values()),
                )
        self._after_change(outcome.finished_at, was_final)
        return True

    def _deferred(self, slot: SystemSlot, outcome: OutcomeReported) -> bool:
        if any(d.command_id == outcome.command_id for d in slot.deferred):
            return False
        slot.deferred.append(outcome)
        self.note(
            outcome.finished_at,
            "deferred_erasure",
            system=slot.system,
            reason=outcome.reason,
            status=outcome.status,
            erased=total(outcome.categories, "erased"),
        )
        return True

    def _carried_out(self, outcome: OutcomeReported) -> bool:
        review = self.reviews.get(outcome.review_id) if outcome.review_id else None
        if review is None:
            return False
        was_final = self.status.is_final
        if not review.carried_out(outcome, self.request_type):
            return False
        self.note(
            outcome.finished_at,
            "review_carried_out",
            review_id=str(review.review_id),
            status=outcome.status,
            erased=total(outcome.categories, "erased"),
            retained=total(outcome.categories, "retained_count"),
            # What a restriction or its lift did instead, where it did anything.
            **{k: n for k in ("restricted", "unrestricted") if (n := total(outcome.categories, k))},
        )
        self._after_change(outcome.finished_at, was_final)
        return True

    def decide(
        self,
        review_id: UUID,
        decision: ReviewDecision,
        token_id: str,
        role: str,
        reason_sha256: str,
        at: datetime,
    ) -> Review | None:
        """A person's decision on a review item; None if there is none open by that id (a
        second decision changes nothing). 'erase' of the search's bound runs one more round."""
        review = self.reviews.get(review_id)
        if review is None or not review.open:
            return None
        was_final = self.status.is_final
        command_id = round_command_id(self.request_id, f"review:{review_id}", 1) if review.system else None
        review.decide(decision, token_id, role, at, command_id)
        self.note(
            at,
            "review_decided",
            review_id=str(review_id),
            decision=decision.value,
            token_id=token_id,
            role=role,
            reason_sha256=reason_sha256,
        )
        if review.system is None:  # the search's bound: search once more, or stop here
            review.state = ReviewState.KEPT
            if decision is ReviewDecision.ERASE:
                review.state = APPLIED[self.request_type]
                self._next_round(at, beyond_bound=True)
        self._after_change(at, was_final)
        return review

    def learn(self, new_identifiers: int, capped: bool = False) -> None:
        """The store opened this round's learnt identifiers: `new_identifiers` were not searched
        with yet (`capped`: more than a request may search with were found)."""
        self.learnt_waiting = new_identifiers
        self.learnt_capped = self.learnt_capped or capped

    def time_out(self, system: str, now: datetime, timeouts: Timeouts) -> str | None:
        """A silent system: 'redispatch' the same command (its worker de-duplicates), or after
        the last try 'failed'; 'released' when a lift still held for its notices goes now (every
        system's command, with the save). None if it answered meanwhile or is not yet due."""
        slot = self.slots[system]
        if slot.state is not SystemState.DISPATCHED or now < slot.dispatched_at + timeouts.wait(
            slot.attempts
        ):
            return None
        if self.recipients.held:
            # A lift whose notices took longer than a system's wait: its commands were never
            # sent, so this is their first try, not a silence to count (with one try allowed,
            # counting it would fail the system without ever asking it).
            self.recipients.held = False
            self.recipients.release_now = True
            self._restart_lift_slots(now)
            self.note(now, "lift_dispatched", systems=sorted(self.slots), reason="notices_timed_out")
            return "released"
        if slot.attempts >= timeouts.attempts:
            was_final = self.status.is_final
            slot.state = SystemState.FAILED
            slot.answered_at = now
            slot.error = f"no answer after {slot.attempts} attempts"
            self.note(now, "system_failed", system=system, attempts=slot.attempts, error=slot.error)
            self._after_change(now, was_final)
            return "failed"
        slot.attempts += 1
        slot.dispatched_at = now
        self.note(now, "redispatched", system=system, attempt=slot.attempts)
        return "redispatch"

    def retry(self, system: str, now: datetime) -> bool:
        """An operator's retry of a failed system, with a new command (the old one's journal
        holds its failure). The request is in progress again until the system answers."""
        slot = self.slots.get(system)
        if slot is None or slot.state is not SystemState.FAILED:
            self.note(now, "retry_ignored", system=system)
            return False
        slot.state = SystemState.DISPATCHED
        slot.attempts += 1
        slot.dispatched_at = now
        slot.command_id = retry_command_id(slot.command_id)
        if self.round == 1:
            slot.outcome = None
        else:
            slot.rounds = [r for r in slot.rounds if r.round != self.round]
        slot.answered_at = None
        slot.error = None
        self.completed_at = None
        self.note(now, "retry_dispatched", system=system, attempt=slot.attempts)
        return True

    def extend(self, months: int, deadline: datetime, at: datetime) -> bool:
        if self.extension is not None:
            return False
        self.extension = Extension(months=months, extended_at=at)
        self.deadline = deadline
        self.note(at, "deadline_extended", months=months, deadline=deadline.isoformat())
        return True

    def notice_updated(self, event: NoticeUpdated) -> bool:
        """Intake's report on a notice's delivery; False if it changes nothing."""
        was_final = self.status.is_final
        notice = self.recipients.update(event)
        if notice is None:
            return False
        self.note(
            event.at,
            f"notice_{notice.state.value}",
            recipient=notice.recipient_id,
            notice_id=str(notice.notice_id),
            attempts=notice.attempts,
            via=notice.acknowledged_via,
            error=notice.error,
            note_sha256=event.note_sha256,
            token_id=event.closed_by,  # the token that closed or acknowledged it
        )
        self._release_lift(event.at)
        self._after_change(event.at, was_final)
        return True

    def _release_lift(self, at: datetime) -> None:
        if self.recipients.release():
            self._restart_lift_slots(at)
            self.note(at, "lift_dispatched", systems=sorted(self.slots))

    def _restart_lift_slots(self, at: datetime) -> None:
        """A held lift's slots were written as dispatched on acceptance, though nothing was
        sent: their wait and first try start when the commands actually go."""
        for slot in self.slots.values():
            if slot.state is SystemState.DISPATCHED:
                slot.dispatched_at, slot.attempts = at, 1

    def announce_lift(self, at: datetime, restricted: Iterable[tuple[str, str]] = ()) -> None:
        """A lift tells its recipients before its commands go out, as the person is told
        (Art. 18(3)); `restricted`: where the person's earlier restrictions restricted records."""
        if self.request_type is RequestType.LIFT_RESTRICTION:
            for notice in self.recipients.plan_lift(self.request_id, sorted(self.slots), restricted, at):
                self.note(at, "notice_planned", recipient=notice.recipient_id, channel=notice.channel)
            self._release_lift(at)

    def _plan_notices(self, at: datetime) -> None:
        """Every system answered and nothing waits for a person: the recipients of what changed
        are told (once; what a deferred erasure changes years later is in the report)."""
        answers = [o for s in self.slots.values() for o in s.answers()]
        answers += [r.outcome for r in self.reviews.values() if r.outcome]
        outcomes = [(o.system, c) for o in answers if o.status == "done" for c in o.categories]
        for notice in self.recipients.plan_after(self.request_id, self.request_type, outcomes, at):
            self.note(at, "notice_planned", recipient=notice.recipient_id, channel=notice.channel)

    def _after_change(self, at: datetime, was_final: bool) -> None:
        """Every system answered this round: search again with what it learnt, or stop at the
        bound and ask a person; then the recipients are told of what changed; then, if nothing
        is left to wait for, the request is final."""
        answered = not any(s.state is SystemState.DISPATCHED for s in self.slots.values())
        if answered and self.learnt_waiting:
            if self.round < self.max_rounds and not self.learnt_capped:
                self._next_round(at)
            else:
                self._bound_reached(at)
        if self.status is not RequestStatus.IN_PROGRESS and not any(r.open for r in self.reviews.values()):
            self._plan_notices(at)
        if self.status.is_final and not was_final:
            times = [s.answered_at for s in self.slots.values() if s.answered_at]
            times += [r.outcome.finished_at for r in self.reviews.values() if r.outcome]
            times += [r.decided_at for r in self.reviews.values() if r.decided_at]
            times += self.recipients.acknowledged_times()
            self.completed_at = max(t for t in times if t is not None)
            self.note(at, "completed", status=self.status.value)

    def _next_round(self, at: datetime, beyond_bound: bool = False) -> None:
        self.round += 1
        # Not complete any more (a late answer can start a round after the request had ended):
        # forgetting reads completed_at, and the new round's commands need the identifiers.
        self.completed_at = None
        if beyond_bound:
            self.max_rounds = max(self.max_rounds, self.round)
        self.note(at, "round_dispatched", round=self.round, learnt=self.learnt_waiting)
        self.learnt_waiting, self.learnt_capped = 0, False
        for slot in self.slots.values():
            slot.state = SystemState.DISPATCHED
            slot.attempts = 1
            slot.dispatched_at = at
            slot.command_id = round_command_id(self.request_id, slot.system, self.round)
            slot.answered_at = None
            slot.error = None

    def _bound_reached(self, at: datetime) -> None:
        bound_id = round_command_id(self.request_id, "search-bound", self.round)
        if bound_id not in self.reviews:
            self.reviews[bound_id] = Review(bound_id, None, EXPANSION_BOUND, [], {}, [], [], self.round, at)
            self.note(
                at,
                "review_opened",
                review_id=str(bound_id),
                reason=EXPANSION_BOUND,
                learnt=self.learnt_waiting,
            )
        self.learnt_waiting = 0

    @property
    def status(self) -> RequestStatus:
        states = [s.state for s in self.slots.values()]
        if any(s is SystemState.DISPATCHED for s in states):
            return RequestStatus.IN_PROGRESS
        if any(r.state is ReviewState.ERASING for r in self.reviews.values()):
            return RequestStatus.IN_PROGRESS
        if any(r.open for r in self.reviews.values()):
            return RequestStatus.AWAITING_REVIEW
        if self.recipients.awaited:
            return RequestStatus.AWAITING_RECIPIENTS
        if any(s is SystemState.FAILED for s in states) or any(
            r.state is ReviewState.FAILED for r in self.reviews.values()
        ):
            return RequestStatus.FAILED
        if self._has_exceptions():
            return RequestStatus.COMPLETED_WITH_EXCEPTIONS
        return RequestStatus.COMPLETED

    def _has_exceptions(self) -> bool:
        """Something the person asked to be erased is still held: retained, restricted,
        referred to another controller, or kept by a reviewer's decision. Anonymised data is no
        longer personal data, so it is not an exception; a restriction request that restricted
        is simply done."""
        if any(r.state is ReviewState.KEPT for r in self.reviews.values()):
            return True
        for slot in self.slots.values():
            answers = slot.answers() + [
                r.outcome for r in self.reviews.values() if r.outcome and r.system == slot.system
            ]
            for c in (c for o in answers for c in o.categories):
                if c.retained or c.redirected:
                    return True
                if self.request_type is RequestType.ERASURE and c.restricted:
                    return True
        return False

    def report(self) -> Report:
        return Report(
            request_id=self.request_id,
            subject_ref=self.subject_ref,
            request_type=self.request_type,
            status=self.status,
            received_at=self.received_at,
            deadline=self.deadline,
            completed_at=self.completed_at,
            deadline_met=None if self.completed_at is None else self.completed_at <= self.deadline,
            systems=[self.slots[name].report() for name in sorted(self.slots)],
            trace_id=self.trace_id,
            extension=self.extension,
            rounds=self.round,
            reviews=[
                r.report()
                for r in sorted(self.reviews.values(), key=lambda r: (r.opened_at, str(r.review_id)))
            ],
            recipients=[self.recipients.notices[k] for k in sorted(self.recipients.notices)],
        )
