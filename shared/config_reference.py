"""Every settings class, for the configuration reference and for checking deployment files
against the code (a variable the code does not read is a typo that would go unnoticed)."""

from __future__ import annotations

from pydantic_settings import BaseSettings

from shared.settings import DatabaseSettings, KafkaSettings, SecretsSettings
from shared.worker.runtime import RetrySettings


def env_names(classes: list[type[BaseSettings]]) -> dict[str, str]:
    """Environment variable -> description."""
    names = {}
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, info in cls.model_fields.items():
            names[(prefix + field_name).upper()] = info.description or ""
    return names


SHARED_SETTINGS: list[type[BaseSettings]] = [KafkaSettings, SecretsSettings, DatabaseSettings, RetrySettings]
