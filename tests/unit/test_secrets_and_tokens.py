"""Security review findings that need no running stack: keys that are keys, bootstrap tokens
that are not placeholders, ldaps:// that checks certificates, compose that carries no keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from pydantic import ValidationError

from services.directory.settings import LdapSettings, TlsChecks, tls_for
from services.intake.auth import Role, parse, parse_bootstrap
from services.intake.settings import IntakeSettings
from services.mailing.store import SuppressionSettings
from shared.secrets import check_key
from shared.settings import SecretsSettings

ROOT = Path(__file__).resolve().parents[2]
GOOD = os.urandom(32).hex()


@pytest.mark.parametrize(
    "value", ["CHANGE-ME", "dev-pseudonym-key-change-me", "changeme" + "0" * 64, "0123456789abcdef", "short"]
)
def test_a_placeholder_or_a_short_value_is_not_a_key(value: str) -> None:
    with pytest.raises(ValueError, match="LETHE_X"):
        check_key(value, "LETHE_X")


@pytest.mark.parametrize(
    "value", [os.urandom(32).hex(), Fernet.generate_key().decode(), os.urandom(48).hex()]
)
def test_random_key_material_is_accepted(value: str) -> None:
    assert check_key(value, "LETHE_X") == value


def test_each_key_setting_refuses_a_placeholder_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_IDENTIFIER_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("LETHE_PSEUDONYM_KEY", "CHANGE-ME")
    with pytest.raises(ValidationError, match="LETHE_PSEUDONYM_KEY"):
        SecretsSettings()
    monkeypatch.setenv("LETHE_MAILING_SUPPRESSION_KEY", "dev-suppression-key-change-me")
    with pytest.raises(ValidationError, match="LETHE_MAILING_SUPPRESSION_KEY"):
        SuppressionSettings()
    monkeypatch.setenv("LETHE_CALLBACK_SECRET", "dev-callback-secret-change-me")
    with pytest.raises(ValidationError, match="LETHE_CALLBACK_SECRET"):
        IntakeSettings()
    monkeypatch.setenv("LETHE_PSEUDONYM_KEY", GOOD)
    monkeypatch.setenv("LETHE_CALLBACK_SECRET", "")  # no callbacks: allowed
    assert SecretsSettings().pseudonym_key.get_secret_value() == GOOD and IntakeSettings()


@pytest.mark.parametrize("token", ["lethe_x_y", "lethe_compose_change-me-admin-token", f"lethe_a_{'b' * 31}"])
def test_a_weak_bootstrap_token_is_refused_outside_a_development_stack(token: str) -> None:
    with pytest.raises(ValueError, match="LETHE_BOOTSTRAP_TOKENS"):
        parse_bootstrap(f"admin:{token}")
    assert parse_bootstrap(f"admin:{token}", development=True) == [(Role.ADMIN, token)]
    strong = f"lethe_admin_{GOOD}"
    assert parse_bootstrap(f"admin:{strong}") == [(Role.ADMIN, strong)]


def test_ldaps_checks_the_certificate_or_refuses_to_start(tmp_path: Path) -> None:
    settings = LdapSettings(url="ldaps://directory.example:636", password="p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LETHE_LDAP_CA_FILE"):
        tls_for(settings, development=False)
    assert tls_for(settings, development=True) == TlsChecks(verify=False)
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    tls = tls_for(settings.model_copy(update={"ca_file": ca}), development=False)
    assert tls == TlsChecks(verify=True, ca_file=ca)
    assert tls_for(settings.model_copy(update={"url": "ldap://directory.example"}), development=False) is None


def test_compose_carries_no_keys_and_publishes_on_loopback_only() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(compose)["services"]
    env = {**services["intake"]["environment"], **services["mailing"]["environment"]}
    for name in (
        "LETHE_IDENTIFIER_KEY",
        "LETHE_PSEUDONYM_KEY",
        "LETHE_CALLBACK_SECRET",
        "LETHE_BOOTSTRAP_TOKENS",
        "LETHE_MAILING_SUPPRESSION_KEY",
    ):
        assert env[name].startswith(f"${{{name}:?"), f"{name} must be given, not defaulted"
    assert "change-me" not in compose.lower()
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def test_a_settings_error_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.service import settings_error
    from shared.settings import DatabaseSettings, KafkaSettings

    monkeypatch.delenv("LETHE_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError) as missing:
        DatabaseSettings()
    assert "LETHE_DATABASE_URL:" in settings_error(missing.value)
    monkeypatch.setenv("LETHE_KAFKA_FETCH_MAX_WAIT_MS", "0")
    with pytest.raises(ValidationError) as bad:
        KafkaSettings()
    assert "LETHE_KAFKA_FETCH_MAX_WAIT_MS:" in settings_error(bad.value)


def test_a_token_id_may_be_what_earlier_versions_took_but_never_hold_a_control_character() -> None:
    assert parse("lethe_ci.main@build:7_" + "s" * 40) == ("ci.main@build:7", "s" * 40)
    assert parse("lethe_a\x00b_secret") is None  # a cookie's NUL reached the database: a 500
    assert parse("lethe_a\x7fb_secret") is None and parse("lethe__secret") is None


@pytest.mark.parametrize(
    "url",
    [
        "ldaps://a.example:636 ldap://b.example:389",
        "ldaps://a.example,ldap://b.example",
        "http://x",
        "a.example",
    ],
)
def test_the_directory_url_is_one_ldap_server(url: str) -> None:
    """libldap falls back along a list: `ldaps://a ldap://b` would bind to b in clear."""
    with pytest.raises(ValueError, match="LETHE_LDAP_URL"):
        LdapSettings(url=url, password="p")  # type: ignore[arg-type]


def test_an_empty_directory_password_is_refused() -> None:
    """An empty password is an unauthenticated bind, which a directory may allow and then show
    nothing: every erasure would find no one and report itself done."""
    with pytest.raises(ValueError, match="password"):
        LdapSettings(password="")  # type: ignore[arg-type]
