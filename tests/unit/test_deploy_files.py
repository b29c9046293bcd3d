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
from shared import access, topics

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


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def test_the_kafka_cluster_takes_only_authenticated_tls_clients_and_enforces_acls() -> None:
    [cluster] = by_kind("Kafka")
    kafka = cluster["spec"]["kafka"]
    assert kafka["listeners"], "no listener"
    for listener in kafka["listeners"]:
        assert listener["tls"] is True and listener["authentication"] == {"type": "scram-sha-512"}
    assert kafka["authorization"] == {"type": "simple"}
    assert kafka["config"]["allow.everyone.if.no.acl.found"] is False
    # The users' Secrets must appear where the deployments read them.
    assert cluster["spec"]["entityOperator"]["userOperator"]["watchedNamespace"] == render.NAMESPACE
    config = next(d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "lethe-config")["data"]
    assert config["LETHE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["LETHE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["LETHE_KAFKA_BOOTSTRAP"].endswith(f":{kafka['listeners'][0]['port']}")


def acl_grants(user: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (a["resource"]["type"], a["resource"]["patternType"], a["resource"]["name"], op)
        for a in user["spec"]["authorization"]["acls"]
        for op in a["operations"]
    }


def test_each_service_logs_in_as_its_own_user_with_exactly_its_acls() -> None:
    users = {u["metadata"]["name"]: u for u in by_kind("KafkaUser")}
    for user in users.values():
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"]["type"] == "simple"
        assert not any(name == "*" for _, _, name, _ in acl_grants(user)), user["metadata"]["name"]
    for deployment in by_kind("Deployment"):
        name = deployment["metadata"]["name"]
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["LETHE_KAFKA_SASL_USERNAME"]["value"] == name and name in users
        assert env["LETHE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": name,
            "key": "password",
        }
        grant = access.services()[name.removeprefix("lethe-")]
        granted = acl_grants(users[name])
        reads = {n for kind, _, n, op in granted if kind == "topic" and op == "Read"}
        writes = {n for kind, _, n, op in granted if kind == "topic" and op == "Write"}
        groups = {n for kind, _, n, op in granted if kind == "group" and op == "Read"}
        assert (reads, writes, groups) == (grant.read, grant.write, grant.groups), name


def test_the_upstream_tool_may_only_submit_and_read_its_replies_and_completions() -> None:
    [upstream] = [u for u in by_kind("KafkaUser") if u["metadata"]["name"] == "lethe-upstream"]
    assert acl_grants(upstream) == {
        ("topic", "literal", topics.INGRESS, "Write"),
        ("topic", "literal", topics.INGRESS, "Describe"),
        ("topic", "literal", topics.INGRESS_REPLIES, "Read"),
        ("topic", "literal", topics.INGRESS_REPLIES, "Describe"),
        ("topic", "literal", topics.REQUESTS_COMPLETED, "Read"),
        ("topic", "literal", topics.REQUESTS_COMPLETED, "Describe"),
        ("topic", "literal", topics.NOTIFICATIONS, "Read"),
        ("topic", "literal", topics.NOTIFICATIONS, "Describe"),
        ("topic", "literal", topics.DEADLINES, "Read"),
        ("topic", "literal", topics.DEADLINES, "Describe"),
        ("group", "prefix", topics.UPSTREAM_GROUP_PREFIX, "Read"),
    }


def test_the_autoscaler_reads_lag_through_the_authenticated_listener() -> None:
    auths = {d["metadata"]["name"]: d for d in by_kind("TriggerAuthentication")}
    secrets = {d["metadata"]["name"]: d for d in by_kind("Secret")}
    users = {u["metadata"]["name"] for u in by_kind("KafkaUser")}
    for scaled in by_kind("ScaledObject"):
        [trigger] = scaled["spec"]["triggers"]
        refs = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        assert {r["parameter"] for r in refs} >= {"sasl", "username", "password", "tls", "ca"}
        for ref in refs:  # a Secret rendered here, or the one Strimzi writes for a KafkaUser
            assert ref["name"] in secrets or ref["name"] in users, ref


def compose_acls() -> dict[str, set[tuple[str, str, str, str]]]:
    """principal -> {(kind, pattern, name, operation)} from the kafka-acls service's script."""
    grants: dict[str, set[tuple[str, str, str, str]]] = {}
    for line in COMPOSE["services"]["kafka-acls"]["command"][0].splitlines():
        words = line.split()
        if words[:1] != ["acl"]:
            continue
        options = list(zip(words[1::2], words[2::2], strict=True))
        principal = next(v for k, v in options if k == "--allow-principal").removeprefix("User:")
        kind, name = next((k.removeprefix("--"), v) for k, v in options if k in ("--topic", "--group"))
        pattern = dict(options).get("--resource-pattern-type", "literal")
        grants.setdefault(principal, set()).update(
            (kind, pattern, name, v) for k, v in options if k == "--operation"
        )
    return grants


def test_compose_clients_log_in_and_only_through_sasl() -> None:
    broker = COMPOSE["services"]["kafka"]["environment"]
    protocols = dict(p.split(":") for p in broker["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for listener in broker["KAFKA_ADVERTISED_LISTENERS"].split(","):
        assert protocols[listener.split("://")[0]].startswith("SASL_"), listener
    # The one listener without authentication is the controller's, on the container's loopback.
    listeners = broker["KAFKA_LISTENERS"].split(",")
    unauthenticated = [n for n in listeners if protocols[n.split("://")[0]] == "PLAINTEXT"]
    assert unauthenticated == ["CONTROLLER://localhost:9093"]
    assert broker["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert broker["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    for name in LETHE_SERVICES:
        service = COMPOSE["services"][name]
        env = service["environment"]
        assert env["LETHE_KAFKA_SECURITY_PROTOCOL"] == protocols["CLIENT"]
        assert env["LETHE_KAFKA_SASL_MECHANISM"] in broker["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
        assert (
            f"user_{env['LETHE_KAFKA_SASL_USERNAME']}="
            in broker["KAFKA_LISTENER_NAME_CLIENT_PLAIN_SASL_JAAS_CONFIG"]
        )
        assert service["depends_on"]["kafka-acls"] == {"condition": "service_completed_successfully"}


def test_compose_upstream_user_may_only_submit_and_read_its_replies_and_completions() -> None:
    grants = compose_acls()
    assert grants["upstream"] == {
        ("topic", "literal", topics.INGRESS, "Write"),
        ("topic", "literal", topics.INGRESS, "Describe"),
        ("topic", "literal", topics.INGRESS_REPLIES, "Read"),
        ("topic", "literal", topics.INGRESS_REPLIES, "Describe"),
        ("topic", "literal", topics.REQUESTS_COMPLETED, "Read"),
        ("topic", "literal", topics.REQUESTS_COMPLETED, "Describe"),
        ("topic", "literal", topics.NOTIFICATIONS, "Read"),
        ("topic", "literal", topics.NOTIFICATIONS, "Describe"),
        ("topic", "literal", topics.DEADLINES, "Read"),
        ("topic", "literal", topics.DEADLINES, "Describe"),
        ("group", "prefixed", topics.UPSTREAM_GROUP_PREFIX, "Read"),
    }
    assert {
        n for k, _, n, op in grants["upstream"] if k == "topic" and op == "Write"
    } == access.UPSTREAM.write
    assert {n for k, _, n, op in grants["upstream"] if k == "topic" and op == "Read"} == access.UPSTREAM.read
    # The services' user: Lethe's topics and groups only (prefixed), never everything.
    assert {(k, p, n) for k, p, n, _ in grants["lethe"]} == {
        ("topic", "prefixed", "lethe."),
        ("group", "prefixed", "lethe-"),
    }
