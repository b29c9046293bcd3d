"""Every Kafka client gets the same transport security: settings that are complete or refused
(naming the variable), one function that turns them into aiokafka's arguments, and no client
constructed anywhere without it."""

from __future__ import annotations

import ast
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared import kafka
from shared.kafka import client_options, make_consumer, make_producer, warn_if_unencrypted
from shared.settings import KafkaSettings
from tests.certs import TlsFiles, make_tls_files

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AssigningConsumer"}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def sasl_ssl(tls: TlsFiles, **extra: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap="broker.example:9093",
        security_protocol="SASL_SSL",
        sasl_username="lethe-billing",
        sasl_password="s3cret-pw",  # type: ignore[arg-type]
        ssl_cafile=tls.ca,
        **extra,
    )


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"security_protocol": "SASL_SSL", "sasl_password": "pw"}, "LETHE_KAFKA_SASL_USERNAME"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}, "LETHE_KAFKA_SASL_PASSWORD"),
        ({"security_protocol": "SSL"}, "LETHE_KAFKA_SSL_CAFILE: required with SSL"),
        (
            {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
            "LETHE_KAFKA_SSL_CAFILE: no such",
        ),
        ({"ssl_cafile": "/etc/hostname"}, "LETHE_KAFKA_SSL_CAFILE: set, but PLAINTEXT does not use TLS"),
        ({"sasl_username": "u"}, "LETHE_KAFKA_SASL_USERNAME: set, but PLAINTEXT does not use SASL"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"security_protocol": "TLS"}, "security_protocol"),
    ],
)
def test_incomplete_security_is_refused_naming_the_variable(settings: dict[str, Any], variable: str) -> None:
    with pytest.raises(ValidationError, match=variable):
        KafkaSettings(**settings)


def test_a_client_certificate_needs_its_key(tls: TlsFiles) -> None:
    with pytest.raises(ValidationError, match="LETHE_KAFKA_SSL_KEYFILE"):
        KafkaSettings(security_protocol="SSL", ssl_cafile=tls.ca, ssl_certfile=tls.cert)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tls: TlsFiles) -> None:
    monkeypatch.setenv("LETHE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LETHE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("LETHE_KAFKA_SASL_USERNAME", "lethe-intake")
    monkeypatch.setenv("LETHE_KAFKA_SASL_PASSWORD", "pw")
    monkeypatch.setenv("LETHE_KAFKA_SSL_CAFILE", str(tls.ca))
    settings = KafkaSettings()
    assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    assert "pw" not in repr(settings)  # a SecretStr: never in a log line


def test_plaintext_passes_no_security_arguments() -> None:
    assert client_options(KafkaSettings(bootstrap="k:9092")) == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
        "metadata_max_age_ms": 300_000,
    }


def test_sasl_ssl_passes_credentials_and_a_verifying_tls_context(tls: TlsFiles) -> None:
    options = client_options(sasl_ssl(tls))
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "broker.example:9093",
        "security_protocol": "SASL_SSL",
        "metadata_max_age_ms": 300_000,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "lethe-billing",
        "sasl_plain_password": "s3cret-pw",
    }
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test CA"),),)]


def test_mutual_tls_loads_the_client_certificate(tls: TlsFiles) -> None:
    settings = KafkaSettings(
        security_protocol="SSL", ssl_cafile=tls.ca, ssl_certfile=tls.cert, ssl_keyfile=tls.key
    )
    options = client_options(settings)
    assert set(options) == {"bootstrap_servers", "security_protocol", "metadata_max_age_ms", "ssl_context"}


def test_a_file_that_is_not_pem_stops_the_service_naming_it(tmp_path: Path, tls: TlsFiles) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match="LETHE_KAFKA_SSL_CAFILE: not a PEM"):
        client_options(KafkaSettings(security_protocol="SSL", ssl_cafile=garbage))
    wrong_key = KafkaSettings(
        security_protocol="SSL", ssl_cafile=tls.ca, ssl_certfile=tls.cert, ssl_keyfile=tls.ca
    )
    with pytest.raises(ValueError, match="LETHE_KAFKA_SSL_CERTFILE / LETHE_KAFKA_SSL_KEYFILE"):
        client_options(wrong_key)


async def test_the_factories_build_clients_that_authenticate(tls: TlsFiles) -> None:
    """What aiokafka itself will use: read back from the clients the factories build."""
    settings = sasl_ssl(tls)
    producer, consumer = make_producer(settings), make_consumer(settings, ["lethe.outcomes.v1"], "g")
    try:
        for client in (producer.client, consumer._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == "SCRAM-SHA-512"
            assert (client._sasl_plain_username, client._sasl_plain_password) == (
                "lethe-billing",
                "s3cret-pw",
            )
            assert isinstance(client._ssl_context, ssl.SSLContext)
    finally:
        await producer.stop()
        await consumer.stop()


def client_constructions(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) in CLIENTS
    ]


def passes_client_options(call: ast.Call) -> bool:
    spread = [k.value for k in call.keywords if k.arg is None]
    named = {k.arg for k in call.keywords}
    return "bootstrap_servers" not in named and any(
        isinstance(v, ast.Call) and getattr(v.func, "id", None) == "client_options" for v in spread
    )


def test_every_client_in_the_code_is_built_with_the_security_options() -> None:
    """A grep over the source: a client constructed without `**client_options(...)` would reach
    the broker without TLS or SASL, whatever the settings say."""
    sources = [p for d in ("shared", "services", "cli", "bench") for p in (ROOT / d).rglob("*.py")]
    calls = {(p, c.lineno): c for p in sources for c in client_constructions(p)}
    assert len(calls) >= 9, "the scan no longer finds the clients: fix the test"
    missing = [
        f"{p.relative_to(ROOT)}:{line}" for (p, line), c in calls.items() if not passes_client_options(c)
    ]
    assert not missing, f"built without **client_options(settings): {missing}"


def test_plaintext_outside_development_is_said_loudly(
    caplog: pytest.LogCaptureFixture, tls: TlsFiles
) -> None:
    with caplog.at_level(logging.WARNING, logger=kafka.__name__):
        assert warn_if_unencrypted(KafkaSettings(), development=False)
        assert warn_if_unencrypted(
            KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p"),
            development=False,
        )  # type: ignore[arg-type]
        assert not warn_if_unencrypted(KafkaSettings(), development=True)
        assert not warn_if_unencrypted(sasl_ssl(tls), development=False)
    assert len(caplog.records) == 2
    assert "LETHE_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in caplog.records[0].getMessage()
