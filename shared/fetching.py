"""How Lethe's consumers fetch: at a pace that follows the traffic, and never past a message.

Both guard against behaviour of the embedded broker (tansu) that Apache Kafka does not have;
on Kafka they cost nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from shared import unreadable
from shared.telemetry import metrics

log = logging.getLogger(__name__)
Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

_pacing: weakref.WeakKeyDictionary[AIOKafkaConsumer, tuple[int, int, int]] = weakref.WeakKeyDictionary()
_heard_at: weakref.WeakKeyDictionary[AIOKafkaConsumer, float] = weakref.WeakKeyDictionary()
_next: weakref.WeakKeyDictionary[AIOKafkaConsumer, dict[TopicPartition, int]] = weakref.WeakKeyDictionary()
_backoff: weakref.WeakKeyDictionary[AIOKafkaConsumer, float] = weakref.WeakKeyDictionary()
_refetches: weakref.WeakKeyDictionary[AIOKafkaConsumer, dict[tuple[TopicPartition, int], int]] = (
    weakref.WeakKeyDictionary()
)
_rewound_at: weakref.WeakKeyDictionary[AIOKafkaConsumer, float] = weakref.WeakKeyDictionary()
_assigned_since: weakref.WeakKeyDictionary[AIOKafkaConsumer, set[TopicPartition]] = (
    weakref.WeakKeyDictionary()
)
_rewinds: weakref.WeakKeyDictionary[AIOKafkaConsumer, int] = weakref.WeakKeyDictionary()
_last_rewind_at: float | None = None  # time.monotonic() of this process's last rewind_all
# How long after a rewind a partition the group assigns is rewound too (see RewindLater).
REWIND_WINDOW_S = 60.0
# A gap that survives this many fetches is taken as real (a compacted record, a transaction
# marker on Kafka): waiting longer would stall the partition for good.
MAX_REFETCHES = 50
ASK_COORDINATOR_S = 5.0
# How long nothing must arrive before a consumer backs off past its idle wait to its quiet one:
# longer than the gaps of a steady trickle (1 request/s), so only a consumer with nothing to
# do (a retry topic under load, everything on a quiet day) polls at the slowest pace.
QUIET_S = 5.0


async def poll(consumer: AIOKafkaConsumer, what: str, timeout_ms: int = 200) -> Batches:
    """One poll of a consume loop: the records in order (`fetch_in_order`), the fetch wait
    paced to the traffic, the lag recorded. A broker that is away gives an empty poll after a
    pause that doubles up to 5 s, so the loop keeps checking whether it should stop."""
    try:
        batches = await fetch_in_order(consumer, timeout_ms)
    except KafkaError as exc:
        delay = _backoff.get(consumer, 0.2)
        log.warning("fetch failed", extra={"consumer": what, "error": type(exc).__name__})
        await asyncio.sleep(delay)
        _backoff[consumer] = min(delay * 2, 5.0)
        return {}
    _backoff.pop(consumer, None)
    pace_fetches(consumer, bool(batches))
    record_lag(consumer, batches)
    return batches


def record_lag(consumer: AIOKafkaConsumer, batches: Batches) -> None:
    for tp, records in batches.items():
        highwater = consumer.highwater(tp)
        if highwater is not None and records:
            metrics.consumer_lag.set(
                max(0, highwater - records[-1].offset - 1),
                {"topic": tp.topic, "partition": str(tp.partition)},
            )


def register(
    consumer: AIOKafkaConsumer, busy_ms: int, idle_ms: int | None = None, quiet_ms: int | None = None
) -> None:
    """The consumer's waits: each at least the one before (unset: the one before)."""
    idle = max(busy_ms, idle_ms or busy_ms)
    _pacing[consumer] = (busy_ms, idle, max(idle, quiet_ms or idle))


class RewindLater(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions assigned soon after a rewind are read from their start too.

    Between the broker's restart and the moment a sentinel shows it forgot, a consumer may
    commit its old positions to the new broker; a group rejoin that completes after the rewind
    then restores those offsets, past the end of the new partitions, where tansu answers with
    nothing (Kafka would answer OFFSET_OUT_OF_RANGE and reset): the broker-loss fault test
    lost a third of the re-sent commands that way under load. The seek is made by the consume
    loop (`fetch_in_order`), not inside the rebalance."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = weakref.ref(consumer)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.consumer()
        at = _rewound_at.get(consumer) if consumer is not None else None
        if consumer is not None and at is not None and time.monotonic() - at < REWIND_WINDOW_S:
            _assigned_since.setdefault(consumer, set()).update(assigned)


def by_assignment(consumer: AIOKafkaConsumer) -> bool:
    """Whether `consumer` reads every partition by assignment (shared.kafka.AssigningConsumer)
    rather than as a member of its group."""
    return bool(getattr(consumer, "reads_by_assignment", False))


def assigned(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
    """What RewindLater does for a group member, for a consumer given its partitions by
    assignment: assigned soon after a rewind (one starting while the process recovers from a
    broker that forgot), it reads them from their start, not from where its group committed."""
    if _last_rewind_at is not None and time.monotonic() - _last_rewind_at < REWIND_WINDOW_S:
        _assigned_since.setdefault(consumer, set()).update(partitions)


def pace_fetches(consumer: AIOKafkaConsumer, received: bool, now: float | None = None) -> None:
    """Adapt the fetch wait after each poll: the short wait while messages flow, doubling up to
    the idle wait while none do, and up to the quiet wait once none has come for `QUIET_S`. On
    a broker that holds every fetch for the whole wait (tansu), a short wait is what keeps a hop
    fast, and polling at that pace while idle burned more than a core across the stack
    (docs/performance.md, before issue 17). On Kafka, which answers as soon as data arrives,
    the idle and quiet waits are left unset, the three are the same and this changes nothing.
    `now`: time.monotonic() unless a test gives it.

    aiokafka reads the wait from its fetcher for each request it builds; the attribute is
    private, so a test pins it to the installed aiokafka."""
    busy_ms, idle_ms, quiet_ms = _pacing.get(consumer, (0, 0, 0))
    fetcher = getattr(consumer, "_fetcher", None)
    if quiet_ms == busy_ms or fetcher is None:
        return
    now = time.monotonic() if now is None else now
    if received:
        _heard_at[consumer] = now
        fetcher._fetch_max_wait_ms = busy_ms
        return
    current: int = fetcher._fetch_max_wait_ms
    ceiling = quiet_ms if now - _heard_at.setdefault(consumer, now) >= QUIET_S else idle_ms
    fetcher._fetch_max_wait_ms = min(ceiling, current * 2)


async def rewind_all() -> int:
    """Read every partition of every consumer of this process from its start again: after the
    broker forgot (it restarted empty), the partitions begin anew and a consumer may still
    stand at a place past their end, where tansu answers a fetch with nothing, not with an
    error that would reset it. What was already handled is handled again (every handler is
    idempotent). Returns the partitions rewound."""
    global _last_rewind_at
    _last_rewind_at = time.monotonic()
    rewound = 0
    for consumer in list(_pacing):
        partitions = list(consumer.assignment())
        _rewound_at[consumer] = time.monotonic()
        read_from_start(consumer, partitions)
        rewound += len(partitions)
    log.warning(
        "the broker forgot: consumers read every partition from its start", extra={"partitions": rewound}
    )
    return rewound


# "From the start" is offset 0, set with `seek`, not `seek_to_beginning`: that one waits for the
# fetcher to look the offset up, and from inside the consume loop it waited for ever (the
# tracker's consumer hung in the fault suite). A partition whose log no longer starts at 0 (a
# real Kafka's retention) answers OFFSET_OUT_OF_RANGE, and auto_offset_reset=earliest takes the
# consumer to its start.


def _states(consumer: AIOKafkaConsumer) -> dict[TopicPartition, Any]:
    """aiokafka's state of each partition assigned to `consumer` (what consumer.highwater()
    reads); none before an assignment (or for a test's stand-in of a consumer)."""
    subscription = getattr(getattr(consumer, "_subscription", None), "subscription", None)
    if subscription is None:
        return {}
    return {tp: subscription.assignment.state_value(tp) for tp in subscription.assignment.tps}


def standing() -> list[dict[str, object]]:
    """Where each consumer of this process stands in each partition it was given, against the
    partition's end as the broker last said: for a dump of a stuck process (SIGUSR1)."""
    places: list[dict[str, object]] = []
    for consumer in list(_pacing):
        for tp, state in sorted(_states(consumer).items()):
            if state.has_valid_position:
                places.append(
                    {
                        "partition": f"{tp.topic}/{tp.partition}",
                        "position": state.position,
                        "end": state.highwater,
                    }
                )
    return places


def read_from_start(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
    """Forget where each partition's records ended and seek it to offset 0 (the "From the start"
    note above says why not seek_to_beginning)."""
    for tp in partitions:
        forget(consumer, tp)
        consumer.seek(tp, 0)
        _rewinds[consumer] = _rewinds.get(consumer, 0) + 1


def rewinds(consumer: AIOKafkaConsumer) -> int:
    """How many times a partition of `consumer` was read from its start again. A batch fetched
    before a rewind came from the log the broker forgot: its places must not be committed to
    the broker that replaced it (`delivery.commit`). A group member's commit would be refused
    there, its generation being unknown; one reading by assignment commits with none, and a
    place past the new log's end would tell the shedder (cli/shedding.py) that its group had
    read what it had not."""
    return _rewinds.get(consumer, 0)


def forget(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    """Forget where a partition's records ended, before seeking it somewhere else on purpose
    (a topic that the broker forgot, read again from its start)."""
    _next.get(consumer, {}).pop(tp, None)
    # Gaps counted before belong to the partition's old log: a new one starts counting anew.
    tries = _refetches.get(consumer, {})
    for key in [k for k in tries if k[0] == tp]:
        del tries[key]


async def fetch_in_order(consumer: AIOKafkaConsumer, timeout_ms: int) -> Batches:
    """`getmany`, minus anything past a skipped offset, which is fetched again.

    Under concurrent producers tansu can answer a fetch with a message whose offset is beyond
    the next one: an offset assigned to a produce that is not yet readable. aiokafka accepts
    it (on Kafka that happens only after compaction) and moves its position past the missing
    message, which is then never delivered: the soak lost one outcome in 6,000 that way. So
    each partition's records must continue exactly where the last ones ended; at a gap the
    rest is dropped and the consumer seeks back to the missing offset."""
    if late := _assigned_since.pop(consumer, None):
        late &= consumer.assignment()
        read_from_start(consumer, late)
        if late:
            log.warning(
                "partitions assigned after a rewind: read from their start", extra={"partitions": len(late)}
            )
    batches = await consumer.getmany(timeout_ms=timeout_ms)
    _rewind_past_the_end(consumer, batches)
    fetched_at = rewinds(consumer)
    expected = _next.setdefault(consumer, {})
    kept: Batches = {}
    for tp, records in batches.items():
        want = expected.get(tp, records[0].offset if records else 0)
        contiguous: list[ConsumerRecord[bytes, bytes]] = []
        for record in records:
            if record.offset > want and not await _accept_gap(consumer, tp, want, record.offset):
                if rewinds(consumer) != fetched_at:
                    return {}  # rewound meanwhile: this batch, and `want`, are of a forgotten log
                consumer.seek(tp, want)
                break
            contiguous.append(record)
            want = unreadable.last_offset(record) + 1
        if contiguous:
            kept[tp] = contiguous
            expected[tp] = want
            _refetches.get(consumer, {}).pop((tp, contiguous[0].offset), None)  # a gap filled
    return kept


def _rewind_past_the_end(consumer: AIOKafkaConsumer, batches: Batches) -> None:
    """A partition whose broker says, in its answer to a fetch at this consumer's position,
    that it ends before that position has been forgotten: read it from its start. tansu,
    restarted empty, answers such a fetch with nothing rather than OFFSET_OUT_OF_RANGE, and
    the sentinel check (rewind_all) can come too late: a consumer that rejoined its group in
    between may have committed its old positions to the new broker and fetched them back (a
    worker then waited minutes, in the fault suite, for commands sent right after a shed)."""
    past = [
        tp
        for tp, state in _states(consumer).items()
        if tp not in batches
        and state.has_valid_position
        and state.highwater is not None
        and state.position > state.highwater
    ]
    read_from_start(consumer, past)
    if past:
        log.warning(
            "partitions that end before this consumer's place: read from their start",
            extra={"partitions": len(past)},
        )


async def _accept_gap(consumer: AIOKafkaConsumer, tp: TopicPartition, want: int, got: int) -> bool:
    """Whether a jump from `want` to `got` is legitimate: another group member committed past
    it (a rebalance moved the partition), or it has outlasted MAX_REFETCHES. A consumer that
    reads by assignment is its group's only reader: a commit past `want` can only be a place
    of a log the broker has since forgotten, sent to the new broker, and says nothing."""
    committed = None
    if getattr(consumer, "_group_id", None) is not None and not by_assignment(consumer):
        # aiokafka retries a retriable coordinator error for ever, silently; a consume loop
        # must not wait on it: an answer we cannot get counts as no answer.
        try:
            committed = await asyncio.wait_for(consumer.committed(tp), ASK_COORDINATOR_S)
        except (TimeoutError, KafkaError):
            committed = None
    if committed is not None and committed > want:
        return True
    tries = _refetches.setdefault(consumer, {})
    tries[(tp, want)] = tries.get((tp, want), 0) + 1
    metrics.offset_gaps.add(1, {"topic": tp.topic})
    if tries[(tp, want)] > MAX_REFETCHES:
        log.error(
            "offset gap persists, moving on",
            extra={"topic": tp.topic, "partition": tp.partition, "offset": want, "next": got},
        )
        del tries[(tp, want)]
        return True
    log.warning(
        "offset gap, fetching again",
        extra={"topic": tp.topic, "partition": tp.partition, "offset": want, "next": got},
    )
    return False
