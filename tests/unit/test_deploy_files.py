"""docker-compose.yml cannot be run here (no Docker engine): check it against the code."""

from pathlib import Path

import yaml

from services.directory.ldap import LdapSettings
from services.intake.__main__ import IntakeSettings
from services.mailing.store import SuppressionSettings
from services.recordings.store import RecordingsSettings
from shared.config_reference import SHARED_SETTINGS, env_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
KNOWN = env_names([*SHARED_SETTINGS, IntakeSettings, LdapSettings, SuppressionSettings, RecordingsSettings])
LETHE_SERVICES = {"intake", "tracker", "billing", "crm", "recordings", "directory", "mailing"}


def test_every_lethe_service_runs_and_exists_as_a_package() -> None:
    assert set(COMPOSE["services"]) >= LETHE_SERVICES | {
        "kafka",
        "postgres",
        "openldap",
        "otel-collector",
        "jaeger",
    }
    for name in LETHE_SERVICES:
        service = COMPOSE["services"][name]
        assert service["command"] == ["python", "-m", f"services.{name}"]
        assert (ROOT / "services" / name / "__main__.py").exists()
        assert (ROOT / service["build"]["dockerfile"]).exists()


def test_every_lethe_variable_in_compose_is_read_by_the_code() -> None:
    for name in LETHE_SERVICES:
        for variable in COMPOSE["services"][name]["environment"]:
            if variable.startswith("LETHE_") and variable != "LETHE_LOG_LEVEL":
                assert variable in KNOWN, f"{name}: {variable} is not a setting"


def test_each_service_has_its_own_database() -> None:
    urls = [COMPOSE["services"][n]["environment"]["LETHE_DATABASE_URL"] for n in LETHE_SERVICES]
    assert len({u.rsplit("/", 1)[1] for u in urls}) == len(LETHE_SERVICES)


def test_collector_config_is_mounted_and_exists() -> None:
    mount = COMPOSE["services"]["otel-collector"]["volumes"][0].split(":")[0]
    assert (ROOT / mount).exists()
