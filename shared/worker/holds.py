"""The holds a worker must honour, read from the holds topic.

The guarantee: a hold that intake acknowledged (201) before a worker takes up a batch of
commands is honoured by every decision in that batch. Intake answers only after the hold's
message is on the topic; before each batch the worker reads the topic's end offsets and catches
up to them, so every acknowledged hold is at an offset it has read. A hold acknowledged while a
batch is being processed (milliseconds to seconds) applies from the next batch on.

The topic is not the source of truth (intake's holds table is), and a broker can forget it: an
embedded broker restarts empty, a topic is recreated or restored from an old backup. So the view
erases nothing until it can tell that what it read is complete: intake publishes every hold and
then a `HoldsAnnounced` marker listing them with their versions; until the view has read a
marker and every hold it lists (at that version or later), `active` refuses (fail closed), as it
does while a hold message it cannot read stands. A worker that keeps running through a broker
restart keeps what it read (holds are never forgotten by a reader), and re-reads the topic from
its start when the marker it read is gone (checked at every refresh), its end offsets go back or
its partitions change; from then on it needs a new marker, which intake publishes once it
notices the loss, so erasures wait a few seconds rather than miss a hold acknowledged just
before the broker forgot it. How the topic is read (its partitions, their ends, the marker's
place) is shared/worker/holds_topic.py; what is read, and whether it is complete, is here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.codec import PoisonMessage, decode
from shared.contracts.holds import HOLDS_MESSAGE, SNAPSHOT_KEY, HoldsAnnounced, HoldUpdated
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.identity import Identities
from shared.settings import KafkaSettings
from shared.unreadable import unreadable, why
from shared.worker.holds_topic import HoldsBehind, HoldsTopic, MarkerPlace

__all__ = ["ActiveHold", "HoldsBehind", "HoldsUnavailable", "HoldsView"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveHold:
    case_reference: str
    identities: Identities
    categories: frozenset[str] | None


@dataclass(frozen=True)
class InForce:
    """The holds in force at every moment from `since` until `until` (None: for good): none of
    the holds it was made of starts, ends or is released in between."""

    holds: tuple[ActiveHold, ...]
    since: datetime | None
    until: datetime | None

    @classmethod
    def at(cls, moment: datetime, holds: list[tuple[HoldUpdated, Identities]]) -> InForce:
        in_force = tuple(
            ActiveHold(h.case_reference, ids, None if h.categories is None else frozenset(h.categories))
            for h, ids in holds
            if h.active_at(moment) and h.sealed_identifiers is not None
        )
        changes = [t for h, _ in holds for t in (h.released_at, h.expires_at) if t is not None]
        return cls(
            in_force,
            max((t for t in changes if t <= moment), default=None),
            min((t for t in changes if t > moment), default=None),
        )

    def holds_at(self, moment: datetime) -> bool:
        return (self.since is None or self.since <= moment) and (self.until is None or moment < self.until)


class HoldsUnavailable(RuntimeError):
    """Holds cannot be established, so nothing may be erased."""


class HoldsView:
    def __init__(self, kafka: KafkaSettings, seal: IdentifierSeal) -> None:
        self.seal = seal
        self._holds: dict[UUID, tuple[HoldUpdated, Identities]] = {}
        self._announced: HoldsAnnounced | None = None
        # By message key: a later readable message with the same key (the same hold, a later
        # version, on the same partition) supersedes an unreadable one.
        self._unreadable: dict[bytes | None, int] = {}
        self._lock = asyncio.Lock()
        self._topic = HoldsTopic(kafka)
        self._marker_at: MarkerPlace | None = None
        self._refreshed = False
        self._complete: bool | None = None  # as last logged (_say_if_changed)
        # What `active` last gave per system, while no hold changed (the generation) and the
        # moment is inside the span in which none starts or ends: every command asks, and a
        # company may have hundreds of holds.
        self._generation = 0
        self._in_force: dict[str, tuple[int, InForce]] = {}

    async def start(self, consumer: AIOKafkaConsumer | None = None) -> None:
        """Connect (tests may hand in a consumer of their own) and read from the start."""
        await self._topic.start(consumer)

    async def stop(self) -> None:
        await self._topic.stop()

    async def refresh(self) -> None:
        """Catch up with the holds topic to its end offsets as of now. The worker calls this
        before each batch of commands: it is the decision point of every command in it."""
        async with self._lock:
            # While it runs, what the last refresh read stands: another batch's decisions, made
            # after that refresh, are still covered by it (a hold acknowledged meanwhile applies
            # from the next batch on). Marking the view not current for the duration held back
            # every erasure running beside a refresh (3,621 of 5,000 commands in one benchmark).
            try:
                await self._catch_up()
            except BaseException:
                self._refreshed = False  # not read to the end: nothing may be erased until it is
                raise
            self._refreshed = True

    def incomplete(self) -> str | None:
        """Why the holds read so far cannot be trusted to be all of them; None if they can."""
        if not self._refreshed:
            return "the holds topic could not be read up to its end (broker unreachable?)"
        if self._unreadable:
            return f"{len(self._unreadable)} unreadable hold message(s)"
        if self._announced is None:
            return "no holds announcement read yet (intake publishes one at start and after a broker loss)"
        missing = self.missing(self._announced.versions)
        if missing:
            return f"{len(missing)} announced hold(s) not read"
        return None

    def missing(self, versions: Mapping[UUID, int]) -> list[UUID]:
        """The holds of `versions` this view does not have at that version or later."""
        return [
            hold_id
            for hold_id, version in versions.items()
            if hold_id not in self._holds or self._holds[hold_id][0].version < version
        ]

    @property
    def announced(self) -> bool:
        return self._announced is not None

    async def active(self, system: str, moment: datetime) -> list[ActiveHold]:
        """The holds in force at `moment`, as of the last refresh; refuses while incomplete."""
        reason = self.incomplete()
        self._say_if_changed(reason)
        if reason is not None:
            raise HoldsUnavailable(reason)
        cached = self._in_force.get(system)
        if cached is not None and cached[0] == self._generation and cached[1].holds_at(moment):
            return list(cached[1].holds)  # the caller's own: what is kept cannot be changed
        in_force = InForce.at(moment, [(h, ids) for h, ids in self._holds.values() if h.covers(system)])
        self._in_force[system] = (self._generation, in_force)
        return list(in_force.holds)

    def _say_if_changed(self, reason: str | None) -> None:
        """Log each change between complete and not at a decision: what the view trusted is
        then in the worker's log when a decision has to be explained (no identifiers in it)."""
        if (reason is None) == self._complete:
            return
        self._complete = reason is None
        if reason is not None:
            log.warning("holds view not complete: erasures wait", extra={"reason": reason})
            return
        marker = self._marker_at
        log.info(
            "holds view complete",
            extra={
                "holds": len(self._holds),
                "announced": len(self._announced.versions) if self._announced else 0,
                "marker": f"{marker[0].partition}/{marker[1]}" if marker else "",
                "partitions": len(self._topic.partitions),
            },
        )

    async def _catch_up(self) -> None:
        topic = self._topic
        if not topic.partitions:
            await topic.assign()
            if not topic.partitions:
                return
        if topic.follow_partitions():
            self._forget_announcement()
        end = await topic.end_offsets()
        went_back = topic.went_back(end)
        if went_back or not await topic.marker_still_there(self._marker_at, end):
            # The broker forgot the topic, or it was recreated. What we read stays (a hold is
            # never forgotten here), but only a marker read from now on says it is all of them.
            log.warning("holds topic forgotten: reading it again", extra={"partitions": went_back})
            self._forget_announcement()
            if await topic.rewind():
                end = await topic.end_offsets()
        await topic.read_to(end, self._apply)

    def _forget_announcement(self) -> None:
        """Before reading every partition from its start: only a marker read from then on says
        the view has every hold. What was unreadable is forgotten too: read again, a message
        still there is found again, and one gone (a topic made anew) no longer stands."""
        self._announced = self._marker_at = None
        self._unreadable.clear()

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            if unreadable(record):  # what the client sent could not be read (shared/unreadable.py):
                raise PoisonMessage("record", why(record))  # not a tombstone, whatever its value
            if record.value is None:  # a tombstone: nothing stands under its key any more
                self._unreadable.pop(record.key, None)
                return
            message = decode(record.value, HOLDS_MESSAGE)
            if isinstance(message, HoldUpdated):
                # Once per hold, not per command; a hold over for a day has none (it covers nothing).
                sealed = message.sealed_identifiers
                identities = Identities() if sealed is None else self.seal.open(sealed)
        except (PoisonMessage, IdentifierSealError) as exc:
            # Fail closed: a hold we cannot read might cover the records we are about to erase.
            # Not under a key no hold or marker has: any producer on the topic could otherwise
            # stop every erasure for good (the tracker, which reads the topic too, dead-letters it).
            log.error("unreadable hold message", extra={"offset": record.offset, "error": str(exc)})
            if unreadable(record) and record.key is None:  # whose key could not be read either
                # (the rest of a batch whose framing was lost, say: intake sends holds in batches)
                # may be any hold: until the next marker, which lists none under this made-up key.
                self._unreadable[f"@{record.offset}".encode()] = record.offset
            elif _may_be_a_hold(record.key):
                self._unreadable[record.key] = record.offset
            return
        self._unreadable.pop(record.key, None)
        if isinstance(message, HoldsAnnounced):
            # It lists every hold intake has: what could not be read before it (every holds
            # message is on one partition, read in order) under a key it does not list is no
            # hold it lacks; one whose message was corrupted is listed, and stands.
            listed = {str(hold_id).encode() for hold_id in message.versions}
            self._unreadable = {key: offset for key, offset in self._unreadable.items() if key in listed}
            self._announced = message
            self._marker_at = (
                TopicPartition(record.topic, record.partition),
                record.offset,
                message.message_id,
            )
            return
        current = self._holds.get(message.hold_id)
        if current is None or message.version > current[0].version:
            self._holds[message.hold_id] = (message, identities)
            self._generation += 1


def _may_be_a_hold(key: bytes | None) -> bool:
    """Whether a message under this key may be a hold or a marker: intake keys each hold by its
    id, and every marker by SNAPSHOT_KEY."""
    if key == SNAPSHOT_KEY.encode():
        return True
    try:
        UUID((key or b"").decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True
