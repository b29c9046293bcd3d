"""Shedding the embedded broker's history.

tansu's memory storage keeps every message it was given, for ever: it applies no `retention.ms`
and drops the connection on DeleteRecords (README, Performance). Its memory only grows (some
45 MB a minute at 10 requests/s), and a fetch lists every batch stored in its partition. The
embedded stack therefore starts it again, empty, once it holds more than `LETHE_BROKER_SHED_MB`
and nothing has been produced for `LETHE_BROKER_SHED_QUIET_S`: then every consumer has read what
there was, and nothing is lost that the services would have to send again. It tells each service
at once (SIGUSR2: check the broker now), and they recover as from any broker loss: consumers
rewound to the start of the new partitions, holds and unstarted requests announced again
(README, Delivery guarantees). Under steady load it never sheds: a quiet moment is what makes a
restart cost nothing.

A reader outside Lethe (an upstream tool reading replies or completions from the embedded
broker) sees its topics start again from offset 0, as after any restart of a memory-only broker.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka import client_options
from shared.settings import KafkaSettings


class SheddingSettings(BaseSettings):
    """When the embedded stack starts its broker again, empty (not used with a real Kafka)."""

    model_config = SettingsConfigDict(env_prefix="LETHE_BROKER_SHED_", extra="ignore")

    mb: int = Field(
        512,
        ge=0,
        le=1_000_000,
        description="The embedded broker is started again, empty, once its memory (RSS) passes this"
        " many MB and nothing has been produced for LETHE_BROKER_SHED_QUIET_S; 0 never.",
    )
    quiet_s: float = Field(
        10.0,
        ge=1,
        le=86_400,
        description="How long no message may have been produced before the embedded broker is shed.",
    )


@dataclass
class Shedder:
    """The decision, apart from the measuring: `observe` is given the broker's memory and, while
    that is over the limit, the total of its end offsets (anything produced moves it)."""

    settings: SheddingSettings
    _total: int | None = None
    _since: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.mb > 0

    def over(self, rss_mb: float) -> bool:
        return self.enabled and rss_mb >= self.settings.mb

    def observe(self, produced: int, now: float) -> bool:
        """Whether to shed now: `produced` has not moved for the quiet time."""
        if produced != self._total:
            self._total, self._since = produced, now
            return False
        return now - self._since >= self.settings.quiet_s

    def shed(self) -> None:
        """The broker was started again: what it had produced counts afresh."""
        self._total = None


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def produced(kafka: KafkaSettings, names: list[str]) -> int | None:
    """The sum of the end offsets of every partition of `names`; None if the broker cannot say."""
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, enable_auto_commit=False)
    try:
        await consumer.start()
        await consumer.topics()
        partitions = [
            TopicPartition(name, p) for name in names for p in consumer.partitions_for_topic(name) or ()
        ]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        return int(sum(ends.values()))
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
