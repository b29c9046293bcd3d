"""Intake's configuration, from the environment (names in docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.intake.admission import AdmissionLimits
from services.intake.app import ApiLimits
from services.intake.egress import Egress, networks
from shared import topics
from shared.secrets import check_key


class IntakeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    http_port: int = Field(8080, ge=1, le=65535, description="Port of the HTTP API.")
    systems: list[str] = Field(list(topics.SYSTEMS), description="Systems requests may target (JSON list).")
    stuck_after_s: float = Field(3600, gt=0, description="A request unchanged this long is listed as stuck.")
    callback_secret: SecretStr = Field(
        SecretStr(""),
        description="HMAC key signing callbacks (at least 32 random bytes); no callbacks without one.",
    )
    callback_allow_networks: str = Field(
        "",
        description="Networks (CIDRs, comma-separated) callbacks may reach although they are loopback,"
        " private or reserved; by default none (a callback URL is a submitter's choice).",
    )
    bootstrap_tokens: SecretStr = Field(
        SecretStr(""), description="role:token,role:token provisioned at start-up (scripts, CI, first admin)."
    )
    rate_limit_per_s: float = Field(50, gt=0, description="Requests a second allowed per token (sustained).")
    rate_limit_burst: int = Field(200, ge=1, description="Requests a token may make in a burst.")
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024, description="Largest request body.")
    auth_failure_burst: int = Field(
        30,
        ge=1,
        description="Failed authentications (bad, revoked or unknown tokens, failed sign-ins) a client"
        " address may make in a burst; then it is answered 429, good token or not, until it has waited.",
    )
    auth_failures_per_s: float = Field(
        0.5, gt=0, description="Failed authentications a second a client address may make after its burst."
    )

    submit_max_in_flight: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Submissions handled at once, at most; past it, more are answered 503 with Retry-After.",
    )
    submit_target_ms: float = Field(
        250,
        gt=0,
        le=60_000,
        description="How long a submission should take: while they take longer, fewer are let in at once"
        " and the rest are answered 503 with Retry-After at once.",
    )

    relay_hold_file: Path | None = Field(
        None,
        description="Set by the embedded stack: while this file exists (for a minute at most), the outbox"
        " relay holds, so that the broker can drain before its history is shed.",
    )

    @field_validator("callback_secret")
    @classmethod
    def _a_key(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            check_key(value.get_secret_value(), "LETHE_CALLBACK_SECRET")
        return value

    @field_validator("callback_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        networks(value)  # raises naming the variable
        return value

    def egress(self) -> Egress:
        return Egress(networks(self.callback_allow_networks))

    def limits(self) -> ApiLimits:
        return ApiLimits(
            self.stuck_after_s,
            self.rate_limit_per_s,
            self.rate_limit_burst,
            self.max_body_bytes,
            self.auth_failures_per_s,
            self.auth_failure_burst,
            AdmissionLimits(self.submit_max_in_flight, self.submit_target_ms / 1000),
        )
