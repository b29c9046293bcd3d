"""How intake sends notices, and the start-up checks of the register's webhooks: each needs its
secret in the environment (32+ random bytes), https outside development, and a host the egress
policy lets us reach (the rule callbacks follow: no loopback, private or link-local address
unless LETHE_CALLBACK_ALLOW_NETWORKS admits it). A name is checked again on each send, on the
address actually connected to."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.intake.egress import Egress
from services.intake.notice_sender import Retries
from shared.recipients.register import RegisterError, RegisterFile, Webhook
from shared.secrets import check_key


class NoticeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_NOTICE_", extra="ignore")

    attempts: int = Field(10, ge=1, le=100, description="Tries of a webhook notice before it is failed.")
    first_backoff_s: float = Field(
        1.0, gt=0, le=3600, description="Wait after a notice's first failed try; doubled after each."
    )
    max_backoff_s: float = Field(3600.0, gt=0, le=86_400, description="Longest wait between two tries.")

    task_identifiers_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="Days a manual task or failed webhook keeps the identifiers compliance passes on,"
        " if it is not closed before (closing drops them at once).",
    )

    def retries(self) -> Retries:
        return Retries(self.attempts, self.first_backoff_s, self.max_backoff_s)


def webhook_secrets(
    register: RegisterFile, environ: Mapping[str, str], development: bool, egress: Egress
) -> dict[str, str]:
    """Each webhook recipient's signing secret; RegisterError naming the recipient and field for a
    missing or weak secret, a URL that is not https (outside development) or a forbidden host."""
    secrets = {}
    for recipient in register.recipients:
        notify = recipient.notify
        if not isinstance(notify, Webhook):
            continue
        where = f"recipient {recipient.id}: notify"
        parts = urlsplit(notify.url)
        if parts.scheme != "https" and not development:
            raise RegisterError(f"{where}.url: must be https outside development")
        host = (parts.hostname or "").strip("[]")
        literal = "127.0.0.1" if host == "localhost" else host
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            literal = ""  # a name: judged on the address it resolves to, at each send
        if literal and not egress.permitted(literal):
            raise RegisterError(
                f"{where}.url: a loopback, private, link-local or reserved address"
                " (LETHE_CALLBACK_ALLOW_NETWORKS admits a network)"
            )
        secret = environ.get(notify.secret_env, "")
        if not secret:
            raise RegisterError(f"{where}.secret_env: {notify.secret_env} is not set")
        try:
            secrets[recipient.id] = check_key(secret, notify.secret_env)
        except ValueError as exc:
            raise RegisterError(f"{where}.secret_env: {exc}") from None
    return secrets
