"""The tracker's configuration, from the environment (names in docs/configuration.md)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.tracker.saga import Timeouts


class TrackerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_TRACKER_", extra="ignore")

    tick_s: float = Field(
        30.0, gt=0, le=3600, description="How often timeouts and due deferred erasures are checked."
    )
    system_timeout_s: float = Field(
        900.0,
        gt=0,
        le=7 * 86400,
        description="How long a system may stay silent before its command is re-sent.",
    )
    max_attempts: int = Field(3, ge=1, le=20, description="Tries of a silent system before it is failed.")
    timeout_backoff: float = Field(
        2.0, ge=1.0, le=10.0, description="Each further try waits this much longer."
    )

    max_rounds: int = Field(
        3,
        ge=1,
        le=10,
        description="Rounds of the identity search: the first with what the request gave, each next"
        " with what the last learnt from the subject's records; past it, a person decides.",
    )
    recovery_window_s: float = Field(
        3600.0,
        gt=0,
        le=30 * 86400,
        description="After a broker loss, the status and completion of requests finished this recently"
        " are published again (intake or upstream may not have read them).",
    )
    shed_recovery_window_s: float = Field(
        3.0,
        ge=0.5,
        le=3600,
        description="After the embedded stack shed its broker (every message read by Lethe's own"
        " consumers first), requests finished this long before the notice, or since, are published"
        " again: for readers outside Lethe, which the shed does not wait for.",
    )

    failed_identifiers_kept_days: float = Field(
        90.0,
        ge=0,
        le=3650,
        description="A finished request with a failed system keeps its (sealed) identifiers this long,"
        " for compliance to retry the system; other finished requests drop them as soon as no"
        " deferred erasure or open-ended hold can need them.",
    )

    def timeouts(self) -> Timeouts:
        return Timeouts(timedelta(seconds=self.system_timeout_s), self.max_attempts, self.timeout_backoff)
