"""Where the retention policy is read from: by every worker, and by intake (the categories a
hold may name)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.policy.model import DEFAULT_POLICY_FILE


class PolicySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    policy_file: Path = Field(DEFAULT_POLICY_FILE, description="The retention policy (YAML).")
