"""Where the register is (the retention policy it is checked against: LETHE_POLICY_FILE)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.policy.model import load_policy
from shared.policy.settings import PolicySettings
from shared.recipients.register import DEFAULT_REGISTER_FILE, RegisterFile, load_register


class RegisterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    recipients_file: Path = Field(
        DEFAULT_REGISTER_FILE,
        description="The register of recipients (YAML): who is told of each erasure, restriction and lift.",
    )

    def load(self) -> RegisterFile:
        """The register, checked against the retention policy's systems and categories; a
        RegisterError (naming the recipient and field) stops the service."""
        return load_register(self.recipients_file, load_policy(PolicySettings().policy_file))
