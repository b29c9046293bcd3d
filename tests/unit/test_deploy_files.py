"""docker-compose.yml and the Kubernetes manifests cannot be run here (no Docker engine, no
cluster): check them against the code and against their schemas."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from cli.config_reference import known_variables, markdown
from shared import topics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
LETHE_SERVICES = {"intake", "tracker", "billing", "crm", "recordings", "directory", "mailing"}
K8S = ROOT / "deploy" / "k8s"
sys.path.insert(0, str(K8S))
import render  # noqa: E402


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
        assert "healthcheck" in service, name


def test_every_variable_in_compose_and_manifests_is_read_by_the_code() -> None:
    known = known_variables()
    for name in LETHE_SERVICES:
        for variable in COMPOSE["services"][name]["environment"]:
            if variable.startswith(("LETHE_", "OTEL_")):
                assert variable in known, f"compose {name}: {variable} is not a setting"
    for path in K8S.glob("*.yaml"):
        for variable in re.findall(r"\b((?:LETHE|OTEL)_[A-Z_]+)\b", path.read_text()):
            assert variable in known, f"{path.name}: {variable} is not a setting"


def test_each_service_has_its_own_database() -> None:
    urls = [COMPOSE["services"][n]["environment"]["LETHE_DATABASE_URL"] for n in LETHE_SERVICES]
    assert len({u.rsplit("/", 1)[1] for u in urls}) == len(LETHE_SERVICES)


def test_compose_mounts_and_ports_exist() -> None:
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in COMPOSE["volumes"], source
    assert COMPOSE["services"]["intake"]["ports"] == ["127.0.0.1:8080:8080"]  # not on every interface


def test_compose_uses_idempotent_producers_for_real_kafka() -> None:
    for name in LETHE_SERVICES:
        assert COMPOSE["services"][name]["environment"]["LETHE_KAFKA_IDEMPOTENT_PRODUCER"] == "true"


def test_manifests_are_what_the_renderer_writes() -> None:
    for name, text in render.render().items():
        assert (K8S / name).read_text() == text, f"run: python deploy/k8s/render.py ({name} differs)"


def documents() -> list[dict[str, Any]]:
    return [
        d
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


def test_builtin_resources_validate_against_the_kubernetes_schemas() -> None:
    checked = 0
    for doc in documents():
        if doc["apiVersion"].startswith(("keda.sh", "kafka.strimzi.io")):
            continue
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        checked += 1
    assert checked >= 7 * 2 + 4


SCALED_OBJECT = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers", "maxReplicaCount"],
            "properties": {
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "kafka"},
                            "metadata": {
                                "type": "object",
                                "required": ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
                            },
                        },
                    },
                }
            },
        }
    },
}
KAFKA_TOPIC = {
    "type": "object",
    "required": ["spec", "metadata"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["topicName", "partitions", "replicas", "config"],
            "properties": {
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1},
                "config": {"type": "object", "required": ["retention.ms"]},
            },
        }
    },
}


def test_custom_resources_and_their_references() -> None:
    docs = documents()
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert len(scaled) == 6
    for doc in scaled:
        jsonschema.validate(doc, SCALED_OBJECT)
        assert doc["spec"]["scaleTargetRef"]["name"] in deployments
        assert doc["spec"]["triggers"][0]["metadata"]["topic"] in topics.all_topics()
    kafka_topics = [d for d in docs if d["kind"] == "KafkaTopic"]
    for doc in kafka_topics:
        jsonschema.validate(doc, KAFKA_TOPIC)
    assert sorted(d["spec"]["topicName"] for d in kafka_topics) == sorted(topics.all_topics())
    commands = [d for d in kafka_topics if d["spec"]["topicName"].startswith("lethe.commands.")]
    assert all(d["spec"]["config"]["retention.ms"] <= 7 * 24 * 3600 * 1000 for d in commands)
    # Ingress bodies carry identifiers in clear, dead letters copies of anything: a day at most.
    retention = {d["spec"]["topicName"]: d["spec"]["config"]["retention.ms"] for d in kafka_topics}
    assert 0 < retention[topics.INGRESS] <= 24 * 3600 * 1000
    assert 0 < retention[topics.DEAD_LETTERS] <= 24 * 3600 * 1000


def test_every_deployment_has_probes_a_budget_and_runs_as_non_root() -> None:
    docs = documents()
    budgets = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    for doc in (d for d in docs if d["kind"] == "Deployment"):
        container = doc["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["securityContext"]["runAsNonRoot"] is True
        assert doc["metadata"]["name"] in budgets


def test_configuration_reference_is_current() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == markdown(), "run: lethe config-reference"
