"""The worker's settings of its own (the store's and Kafka's are in their modules)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_WORKER_", extra="ignore")

    attempts: int = Field(8, ge=1, le=50, description="Tries of one command before it is reported failed.")
    backoff_initial_s: float = Field(
        0.5, gt=0, le=60, description="Delay before the second try; doubles each try."
    )
    backoff_max_s: float = Field(30.0, gt=0, le=3600, description="Longest delay between tries.")
    match_limit: int = Field(
        25,
        ge=1,
        le=100_000,
        description="Top-level records one identifier may find in a store before all it found only"
        " through it goes to a person instead (a shared mailbox, a switchboard number).",
    )
    concurrency: int = Field(
        8,
        ge=1,
        le=256,
        description="Subjects a worker handles at once (in order per subject); keep <= pool size.",
    )

    batch_max: int = Field(
        64,
        ge=1,
        le=256,  # each holds a lock until the commit: PostgreSQL's lock table is shared
        description="Commands of one fetch the billing, CRM and mailing workers carry out in one"
        " transaction (1: each in its own, as the recordings and directory workers always do). A"
        " batch that fails is rolled back and its commands carried out one by one.",
    )

    def delay(self, attempt: int) -> float:
        """Delay before try number `attempt + 1`."""
        return float(min(self.backoff_initial_s * 2 ** (attempt - 1), self.backoff_max_s))
