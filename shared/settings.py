"""Configuration read from the environment, with the same names in every service.

Defaults are production defaults for a real Apache Kafka; the embedded stack overrides the
broker timings that matter on tansu (fetch wait, session timeout) through the same variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.crypto import IdentifierSeal
from shared.secrets import check_key


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_KAFKA_", extra="ignore")

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    fetch_max_wait_ms: int = Field(
        500, ge=1, le=10_000, description="Consumer fetch wait; 25 on tansu, where 500 adds ~250 ms a hop."
    )
    idle_fetch_max_wait_ms: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Fetch wait a consumer backs off to while nothing arrives (unset: the fetch "
        "wait). On tansu, whose fetches hold for the whole wait, 100: idle polling costs a fifth.",
    )
    quiet_fetch_max_wait_ms: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Fetch wait a consumer backs off to once nothing has arrived for 5 s (unset: the "
        "idle wait). On tansu, 400: the idle stack then uses an eighth of a core, not a sixth.",
    )
    metadata_max_age_ms: int = Field(
        300_000,
        ge=1_000,
        le=3_600_000,
        description="How often a client refreshes its metadata, and so the longest aiokafka can wait "
        "for a refresh that a change of topics during another left pending (aio-libs/aiokafka#847: "
        "a group rejoin then stalls); 5000 on the embedded broker, which restarts.",
    )
    session_timeout_ms: int = Field(
        10_000, ge=1_000, le=300_000, description="Consumer group session timeout."
    )
    heartbeat_interval_ms: int = Field(
        3_000, ge=100, le=60_000, description="Consumer group heartbeat interval."
    )
    group_membership: Literal["join", "assign"] = Field(
        "join",
        description="How a consumer gets its partitions: join (its consumer group shares them out among"
        " the service's instances) or assign (it reads every partition of its topics, joining nothing,"
        " and still commits to its group: for one instance of each service only, as the embedded stack"
        " runs, where a group join takes at least a second after each restart of its broker).",
    )
    idempotent_producer: bool = Field(
        True, description="Enable the idempotent producer (real Kafka only; tansu refuses it)."
    )
    topic_partitions: int = Field(
        6, ge=1, le=1_000, description="Partitions of each topic created at start-up."
    )
    control_topic_partitions: int | None = Field(
        None,
        ge=1,
        le=1_000,
        description="Partitions of the topics that carry a message now and then (retries, extensions, "
        "reviews, holds, notifications, dead letters, sentinels) created at start-up (unset: as the "
        "others). 1 on tansu, where each partition in a fetch costs CPU.",
    )
    replication_factor: int = Field(1, ge=1, le=10, description="Replication factor of created topics.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every client reaches the broker: SASL_SSL (a password, over TLS) in production;"
        " PLAINTEXT (neither) is for the embedded broker, and logs a warning outside development.",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism, with SASL_SSL or SASL_PLAINTEXT."
    )
    sasl_username: str = Field(
        "", description="SASL user, with SASL_*: one per service, so that its ACLs are its own."
    )
    sasl_password: SecretStr = Field(SecretStr(""), description="SASL password, with SASL_*.")
    ssl_cafile: Path | None = Field(
        None,
        description="PEM of the CA that signs the broker's certificate; required with SSL and SASL_SSL"
        " (the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt, for a public CA).",
    )
    ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for brokers that require one (mutual TLS)."
    )
    ssl_keyfile: Path | None = Field(None, description="Private key (PEM) of LETHE_KAFKA_SSL_CERTFILE.")

    @model_validator(mode="after")
    def _security_complete(self) -> KafkaSettings:
        """A half-configured transport fails at start, naming the variable, not at first connect."""
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and not self.sasl_username:
            raise ValueError(f"LETHE_KAFKA_SASL_USERNAME: required with {self.security_protocol}")
        if sasl and not self.sasl_password.get_secret_value():
            raise ValueError(f"LETHE_KAFKA_SASL_PASSWORD: required with {self.security_protocol}")
        if not sasl and self.sasl_username:  # a user that is never sent: someone believes it is
            raise ValueError(
                f"LETHE_KAFKA_SASL_USERNAME: set, but {self.security_protocol} does not use SASL"
            )
        files = {
            "LETHE_KAFKA_SSL_CAFILE": self.ssl_cafile,
            "LETHE_KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "LETHE_KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        if tls and self.ssl_cafile is None:
            raise ValueError(
                f"LETHE_KAFKA_SSL_CAFILE: required with {self.security_protocol} (the broker's"
                " certificate must be checked)"
            )
        for variable, path in files.items():
            if path is not None and not tls:
                raise ValueError(f"{variable}: set, but {self.security_protocol} does not use TLS")
            if path is not None and not path.is_file():
                raise ValueError(f"{variable}: no such file {path}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(
                "LETHE_KAFKA_SSL_KEYFILE: a client certificate needs its key, and the key its certificate"
            )
        return self


class IdentifierKeySettings(BaseSettings):
    """The key that seals subject identifiers, and the keys that also open them (a rotation)."""

    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    identifier_key: SecretStr = Field(
        description="Fernet key that seals subject identifiers inside Kafka commands."
    )
    identifier_extra_keys: SecretStr = Field(
        SecretStr(""),
        description="More Fernet keys (comma-separated) that open, never seal, identifiers: the old key"
        " while a rotation re-seals what was sealed with it, or the next key while it is rolled out.",
    )

    @model_validator(mode="after")
    def _keys_open(self) -> IdentifierKeySettings:
        self.seal()  # a malformed key stops the service, naming its variable
        return self

    def seal(self) -> IdentifierSeal:
        extra = self.identifier_extra_keys.get_secret_value().split(",")
        return IdentifierSeal(self.identifier_key.get_secret_value(), [k.strip() for k in extra if k.strip()])


class SecretsSettings(IdentifierKeySettings):
    """Keys shared by intake (which seals identifiers) and the workers (which open them)."""

    pseudonym_key: SecretStr = Field(
        description="HMAC key that derives the pseudonymous subject reference (at least 32 random bytes)."
    )

    @field_validator("pseudonym_key")
    @classmethod
    def _a_key(cls, value: SecretStr) -> SecretStr:
        check_key(value.get_secret_value(), "LETHE_PSEUDONYM_KEY")
        return value


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    database_url: str = Field(description="PostgreSQL DSN of this service's own database.")
    db_pool_max: int = Field(10, ge=1, le=200, description="Largest connection pool size.")


class RecoverySettings(BaseSettings):
    """How intake and the tracker notice a broker that forgot what it was sent, and put it right."""

    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    broker_check_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often intake and the tracker check that the broker still holds their sentinel"
        " record; when it does not, they re-send what may have been lost.",
    )
    holds_verify_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="How often intake reads the holds topic back and re-announces every hold if what"
        " it holds is not complete (also at start-up).",
    )
    unacknowledged_resend_s: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="A request the tracker has not acknowledged this long after it was announced is"
        " announced again (the same messages: a repeat is de-duplicated); each later time waits"
        " twice as long as the one before, up to 16 times this.",
    )


class DeploymentSettings(BaseSettings):
    """Whether this is a development stack (the embedded one sets it): some checks that protect
    a real deployment would only get in the way of one on a laptop, and say so when relaxed."""

    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    development: bool = Field(
        False,
        description="A development stack: weak bootstrap tokens, ldaps:// without a CA file, http://"
        " and private callback targets and cookies without Secure are allowed, and intake serves /docs"
        " and /redoc. Never in production.",
    )
