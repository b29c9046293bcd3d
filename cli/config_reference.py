"""The configuration reference, generated from the settings classes so that it cannot drift:
`lethe config-reference` prints it; docs/configuration.md is its committed copy (a test keeps
the two equal), and deployment files are checked against it."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings

from shared.settings import DatabaseSettings, KafkaSettings, RecoverySettings, SecretsSettings

ROOT = Path(__file__).resolve().parents[1]
# Read with os.environ where a settings class would be overkill (process plumbing).
PROCESS_VARIABLES = {
    "LETHE_METRICS_PORT": (
        "-",
        "Port of /metrics, /healthz and /readyz (every service, intake included: its API port has no"
        " /metrics); off when unset.",
    ),
    "LETHE_METRICS_HOST": ("127.0.0.1", "Address that endpoint binds to (0.0.0.0 in a container)."),
    "LETHE_TRACE_FILE": ("-", "Also write spans as OTLP JSON lines to this file (the embedded stack does)."),
    "LETHE_TRACE_SQL": (
        "false",
        "A span per SQL statement under each step (asyncpg instrumentation); costs CPU under load.",
    ),
    "LETHE_EVENT_LOOP": ("uvloop", "The services' event loop: uvloop, or asyncio to rule the loop out."),
    "LETHE_READY_FILE": ("-", "A file touched when the service is up (used by the embedded stack)."),
    "LETHE_LOG_LEVEL": ("INFO", "Log level of the JSON logs: DEBUG, INFO, WARNING, ERROR or CRITICAL."),
    "OTEL_SERVICE_NAME": ("lethe-<service>", "Service name in traces and metrics."),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("-", "Send spans over OTLP/HTTP to this collector."),
}


def env_names(classes: list[type[BaseSettings]]) -> dict[str, str]:
    """Environment variable -> description."""
    return {name: description for name, (_, description, _) in _rows(classes).items()}


def _rows(classes: list[type[BaseSettings]]) -> dict[str, tuple[str, str, str]]:
    rows = {}
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, info in cls.model_fields.items():
            value = None if info.is_required() else info.get_default(call_default_factory=True)
            default = "required" if info.is_required() else repr(value)
            if isinstance(value, Path):  # a path in the source tree: say so, not this machine's
                default = (
                    f"<source tree>/{value.relative_to(ROOT)}" if value.is_relative_to(ROOT) else str(value)
                )
            if "secret" in str(info.annotation).lower() and not info.is_required():
                default = "(empty)" if not str(info.get_default()) else "(set)"
            rows[(prefix + field_name).upper()] = (default, info.description or "", cls.__name__)
    return rows


def all_settings() -> list[type[BaseSettings]]:
    """Every settings class of every service."""
    from cli.priority import PrioritySettings
    from cli.shedding import SheddingSettings
    from services.directory.settings import LdapSettings
    from services.intake.notice_settings import NoticeSettings
    from services.intake.settings import IntakeSettings
    from services.mailing.store import SuppressionSettings
    from services.recordings.store import RecordingsSettings
    from services.tracker.settings import TrackerSettings
    from shared.policy.settings import PolicySettings
    from shared.recipients.settings import RegisterSettings
    from shared.worker.settings import RetrySettings

    return [
        KafkaSettings,
        DatabaseSettings,
        SecretsSettings,
        RecoverySettings,
        RetrySettings,
        PolicySettings,
        RegisterSettings,
        IntakeSettings,
        NoticeSettings,
        TrackerSettings,
        LdapSettings,
        RecordingsSettings,
        SuppressionSettings,
        SheddingSettings,
        PrioritySettings,
    ]


def known_variables() -> set[str]:
    return set(env_names(all_settings())) | set(PROCESS_VARIABLES)


def markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `lethe config-reference`; do not edit by hand.",
        "Every service reads the variables of the classes it uses; the names are the same everywhere.",
        "",
        "| variable | default | meaning | read by |",
        "| --- | --- | --- | --- |",
    ]
    for name, (default, description, cls) in sorted(_rows(all_settings()).items()):
        lines.append(f"| `{name}` | `{default}` | {description} | {cls} |")
    for name, (default, description) in sorted(PROCESS_VARIABLES.items()):
        lines.append(f"| `{name}` | `{default}` | {description} | process |")
    return "\n".join(lines) + "\n"
