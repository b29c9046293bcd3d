"""Shedding the embedded broker's history.

tansu's memory storage keeps every message it was given, for ever: it applies no `retention.ms`
and drops the connection on DeleteRecords (docs/performance.md, before issue 17). Its memory
only grows (30-45 MB a minute at 10 requests/s), and a fetch lists every batch stored in its
partition (docs/performance.md, first part). Once it holds more than `LETHE_BROKER_SHED_MB`,
the embedded stack holds intake's outbox relay (shared/relay_hold.py) so that the pipeline
drains, and starts the broker again, empty, once all of this holds:
- every service is up and ready;
- nothing has been produced for `LETHE_BROKER_SHED_QUIET_S`;
- each of their consumer groups has committed the end of every partition it reads
  (shared/topics.consumer_groups): nothing is waiting to be read, not a submission on the
  ingress topic nor a command due for a retry;
- the end offsets, looked at once more just before the kill, have not moved.
A drain not done within `LETHE_BROKER_SHED_DRAIN_S` is given up (the relay let go) and tried
again RETRY_S later. The dead letters, which nobody reads in a group, are carried over
(cli/carry_over.py). Each service is told (SIGUSR2: check the broker now) and recovers as from
any broker loss: consumers rewound to the start of the new partitions, holds and sentinels
placed again, the tracker's completions of the few seconds before the notice published again
once the submissions held meanwhile are through (README, Delivery guarantees).

A reader outside Lethe (an upstream tool reading replies or completions from the embedded
broker) sees its topics start again from offset 0, as after any restart of a memory-only broker,
and what it had not read is gone: the HTTP API still answers for every request. What is
produced in the milliseconds between the last look and the kill is lost as in any broker loss
(what intake and the tracker sent, they send again; an upstream submission, upstream must).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.carry_over import committed_offsets
from cli.dlq import LOST_TAIL_S
from shared import access, topics
from shared.kafka import client_options, partitions_of
from shared.settings import KafkaSettings


class SheddingSettings(BaseSettings):
    """When the embedded stack starts its broker again, empty (not used with a real Kafka)."""

    model_config = SettingsConfigDict(env_prefix="LETHE_BROKER_SHED_", extra="ignore")

    mb: int = Field(
        256,
        ge=0,
        le=1_000_000,
        description="The embedded broker is drained and started again, empty, once its memory (RSS)"
        " passes this many MB; 0 never.",
    )
    quiet_s: float = Field(
        0.25,
        ge=0.1,
        le=600,
        description="How long nothing may have been produced, with intake's outbox relay held, before"
        " the embedded broker is shed.",
    )
    drain_s: float = Field(
        10.0,
        ge=1,
        le=45,
        description="Longest intake's outbox relay is held while the embedded broker drains; a drain that"
        " does not finish in it is given up and tried again 30 s later.",
    )


RETRY_S = 30.0  # a drain given up is tried again this much later
DRAIN_LOOK_S = 0.1  # how often a drain looks at the end offsets


@dataclass
class Shedder:
    """The decision, apart from the measuring: `due` is given the broker's memory at each look;
    during a drain, `observe` is given the total of its end offsets (anything produced moves
    it)."""

    settings: SheddingSettings
    _total: int | None = None
    _since: float = 0.0
    _not_before: float = 0.0
    # Of the last drain, for what the stack prints: when it was first quiet (time.monotonic()),
    # and how many times the groups were looked at (more than once: one was behind).
    quiet_at: float | None = None
    looks: int = 0

    @property
    def enabled(self) -> bool:
        return self.settings.mb > 0

    def over(self, rss_mb: float) -> bool:
        return self.enabled and rss_mb >= self.settings.mb

    def due(self, rss_mb: float, now: float) -> bool:
        """Over the limit, and not within RETRY_S of a drain given up."""
        return self.over(rss_mb) and now >= self._not_before

    def observe(self, produced: int | None, now: float) -> bool:
        """Whether the broker has been quiet long enough: `produced` (None: the broker could
        not say, so no quiet can be assumed) has not moved for the quiet time."""
        if produced is None or produced != self._total:
            self._total, self._since = produced, now
            return False
        return now - self._since >= self.settings.quiet_s

    def put_off(self, now: float) -> None:
        """A drain did not finish: something kept producing, or a group is behind."""
        self._total, self._not_before = None, now + RETRY_S

    def shed(self) -> None:
        """The broker was started again: what it produced counts afresh."""
        self._total = None


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def end_offsets(kafka: KafkaSettings, names: Sequence[str]) -> dict[TopicPartition, int]:
    """The end offset of every partition of `names`."""
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, enable_auto_commit=False)
    try:
        await consumer.start()
        found = await partitions_of(consumer, names)
        return await consumer.end_offsets(found) if found else {}
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def produced(kafka: KafkaSettings, names: Sequence[str]) -> int | None:
    """The sum of the end offsets of every partition of `names`; None if the broker cannot say."""
    try:
        return int(sum((await end_offsets(kafka, names)).values()))
    except (KafkaError, OSError, TimeoutError):
        return None


async def drained(
    kafka: KafkaSettings,
    names: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    shedder: Shedder,
    halted: Callable[[], bool],
) -> tuple[int | None, dict[str, int] | None]:
    """Look at the end offsets of `names` every DRAIN_LOOK_S (one connection for every look)
    until nothing has been produced for the quiet time and no group of `groups` has anything
    left to read, or `drain_s` has passed. Returns the total of the end offsets when drained
    (None if not) and what each group had left to read at the last look."""
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, enable_auto_commit=False)
    behind: dict[str, int] | None = None
    deadline = time.monotonic() + shedder.settings.drain_s
    shedder.quiet_at, shedder.looks = None, 0
    try:
        await consumer.start()
        found = await partitions_of(consumer, names)
        while time.monotonic() < deadline and not halted():
            try:
                total: int | None = int(sum((await consumer.end_offsets(found)).values()))
            except (KafkaError, OSError, TimeoutError):
                total = None
            if shedder.observe(total, time.monotonic()):
                shedder.quiet_at = shedder.quiet_at or time.monotonic()
                shedder.looks += 1
                behind = await unread(kafka, groups)
                if behind is not None and not any(behind.values()):
                    return total, behind
            await asyncio.sleep(DRAIN_LOOK_S)
        return None, behind
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


def groups_of(services: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The consumer groups of the services a stack runs (a stack of some of them only must not
    wait for the groups of the others, which never read anything)."""
    owner = {group: service for service, grant in access.services().items() for group in grant.groups}
    return {g: consumed for g, consumed in topics.consumer_groups().items() if owner.get(g) in services}


async def unread(kafka: KafkaSettings, groups: Mapping[str, Sequence[str]]) -> dict[str, int] | None:
    """How many messages each of `groups` has yet to read: over every partition of its topics,
    the end offset less what it committed (nothing, or a place of a forgotten log: all of it),
    where a record is there to be read. None if the broker cannot say. Asked with member-less
    consumers, which join nothing, for every group at once (a lost tail takes LOST_TAIL_S to
    tell)."""
    names = sorted({t for consumed in groups.values() for t in consumed})
    try:
        ends = await end_offsets(kafka, names)

        async def behind_by(group: str, consumed: Sequence[str]) -> int:
            mine = [tp for tp in ends if tp.topic in consumed and ends[tp] > 0]
            done = dict(zip(mine, await committed_offsets(kafka, group, mine), strict=True))
            stale = await _past_the_end(kafka, {tp: at for tp, at in done.items() if (at or 0) > ends[tp]})
            behind = {
                tp: 0 if tp in stale else at or 0
                for tp, at in done.items()
                if tp in stale or (at or 0) < ends[tp]
            }
            return sum(ends[tp] - behind[tp] for tp in await _readable(kafka, behind))

        counts = await asyncio.gather(*(behind_by(g, consumed) for g, consumed in groups.items()))
        return dict(zip(groups, counts, strict=True))
    except (KafkaError, OSError, TimeoutError):
        return None


@contextlib.asynccontextmanager
async def _probe(kafka: KafkaSettings, at: Mapping[TopicPartition, int]) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of its own (the stack's short fetch wait), placed at `at` in each partition."""
    probe = AIOKafkaConsumer(
        **client_options(kafka), enable_auto_commit=False, fetch_max_wait_ms=kafka.fetch_max_wait_ms
    )
    await probe.start()
    try:
        probe.assign(list(at))
        for tp, offset in at.items():
            probe.seek(tp, offset)
        yield probe
    finally:
        await probe.stop()


async def _past_the_end(kafka: KafkaSettings, committed: dict[TopicPartition, int]) -> set[TopicPartition]:
    """Of the partitions where a group committed a place past the end the broker lists, those
    where it is past the end a fetch reports too: a place on a log the broker has since
    forgotten, committed to the new one (a consumer that reads by assignment commits with no
    generation to refuse it), which says nothing of what the group read here. tansu's listed
    end (ListOffsets) can lag what a fetch has already returned (seen: listed 1, fetched and
    committed 2), hence the fetch; given LOST_TAIL_S, a partition whose fetch says nothing
    counts as past its end."""
    if not committed:
        return set()
    async with _probe(kafka, dict.fromkeys(committed, 0)) as probe:
        deadline = time.monotonic() + LOST_TAIL_S
        while any(probe.highwater(tp) is None for tp in committed) and time.monotonic() < deadline:
            await probe.getmany(timeout_ms=500)
        return {tp for tp, at in committed.items() if at > (probe.highwater(tp) or 0)}


async def _readable(kafka: KafkaSettings, behind: dict[TopicPartition, int]) -> set[TopicPartition]:
    """Of the partitions a group has not read to their end, those with a record there to read.
    tansu, in the burst after a restart, can count a message in a partition's end offset and
    lose it: nothing fills that tail, and no consumer can commit past it. Asked only once
    nothing has been produced for the quiet time, and given LOST_TAIL_S to answer (its own
    connection, the stack's short fetch wait), so a record not readable now never will be."""
    if not behind:
        return set()
    async with _probe(kafka, behind) as probe:
        there: set[TopicPartition] = set()
        deadline = time.monotonic() + LOST_TAIL_S
        while there != set(behind) and time.monotonic() < deadline:
            batches = await probe.getmany(timeout_ms=500)
            there |= {tp for tp, records in batches.items() if any(r.offset >= behind[tp] for r in records)}
            probe.pause(*there)
        return there
