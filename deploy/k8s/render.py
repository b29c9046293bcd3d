"""Renders the Kubernetes manifests in this folder from the code's own lists (services, topics,
settings), so they cannot drift: `python deploy/k8s/render.py` rewrites them, and a test fails
when the committed files differ from what it would write.

Per service: a Deployment (non-root, probes on /readyz and /healthz), a PodDisruptionBudget;
workers and the tracker also get a KEDA ScaledObject that scales on consumer-group lag. Topics
are Strimzi KafkaTopic resources with their partitions, replication and retention."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared import topics

HERE = Path(__file__).resolve().parent
NAMESPACE = "lethe"
IMAGE = "ghcr.io/lethe-project/lethe:0.1.0"
WORKERS = topics.SYSTEMS
API_PORT, HEALTH_PORT = 8080, 9464


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"lethe-{name}", "app.kubernetes.io/part-of": "lethe"}


def env(name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [
        {"name": "OTEL_SERVICE_NAME", "value": f"lethe-{name}"},
        {"name": "LETHE_METRICS_PORT", "value": str(HEALTH_PORT)},
        {"name": "LETHE_METRICS_HOST", "value": "0.0.0.0"},  # noqa: S104 - inside the pod network
        {
            "name": "LETHE_DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "lethe-secrets", "key": f"database-url-{name}"}},
        },
    ]
    if name == "intake":
        items += [
            {"name": "LETHE_HTTP_HOST", "value": "0.0.0.0"},  # noqa: S104
            {"name": "LETHE_HTTP_PORT", "value": str(API_PORT)},
        ]
    return items


def deployment(name: str) -> dict[str, Any]:
    probe_port = API_PORT if name == "intake" else HEALTH_PORT
    container: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "command": ["python", "-m", f"services.{name}"],
        "envFrom": [{"configMapRef": {"name": "lethe-config"}}, {"secretRef": {"name": "lethe-keys"}}],
        "env": env(name),
        "ports": [{"name": "health", "containerPort": HEALTH_PORT}]
        + ([{"name": "http", "containerPort": API_PORT}] if name == "intake" else []),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": probe_port}, "periodSeconds": 10},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": probe_port},
            "periodSeconds": 20,
            "failureThreshold": 6,
        },
        "resources": {"requests": {"cpu": "100m", "memory": "192Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    volumes = []
    if name == "recordings":
        container["env"].append({"name": "LETHE_RECORDINGS_DIR", "value": "/var/lib/lethe/recordings"})
        container["volumeMounts"] = [{"name": "recordings", "mountPath": "/var/lib/lethe/recordings"}]
        volumes = [{"name": "recordings", "persistentVolumeClaim": {"claimName": "lethe-recordings"}}]
    if name == "directory":  # the CA that signs the directory's certificate: ldaps:// is verified
        container["env"].append({"name": "LETHE_LDAP_CA_FILE", "value": "/etc/lethe/ldap/ca.crt"})
        container["volumeMounts"] = [{"name": "ldap-ca", "mountPath": "/etc/lethe/ldap", "readOnly": True}]
        volumes = [{"name": "ldap-ca", "secret": {"secretName": "lethe-ldap-ca"}}]
    # A read-only root: the only writable places are /tmp and, for recordings, the volume.
    container.setdefault("volumeMounts", []).append({"name": "tmp", "mountPath": "/tmp"})  # noqa: S108
    spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": 30,
        "volumes": [*volumes, {"name": "tmp", "emptyDir": {}}],
    }

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"lethe-{name}", "namespace": NAMESPACE, "labels": labels(name)},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels(name)},
            "template": {
                "metadata": {
                    "labels": labels(name),
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(probe_port)},
                },
                "spec": spec,
            },
        },
    }


def pdb(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": f"lethe-{name}", "namespace": NAMESPACE, "labels": labels(name)},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels(name)}},
    }


def scaled_object(name: str, group: str, topic: str) -> dict[str, Any]:
    """More consumers than partitions would idle: maxReplicaCount is the partition count."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": f"lethe-{name}", "namespace": NAMESPACE, "labels": labels(name)},
        "spec": {
            "scaleTargetRef": {"name": f"lethe-{name}"},
            "minReplicaCount": 2,
            "maxReplicaCount": PARTITIONS,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "kafka",
                    "metadata": {
                        "bootstrapServers": "lethe-kafka-bootstrap.kafka:9092",
                        "consumerGroup": group,
                        "topic": topic,
                        "lagThreshold": "50",
                        "offsetResetPolicy": "earliest",
                    },
                }
            ],
        },
    }


PARTITIONS = 12


def kafka_topic(name: str) -> dict[str, Any]:
    """Retention and clean-up as the services create topics themselves (topics.topic_config)."""
    config: dict[str, Any] = {
        k: int(v) if k == "retention.ms" else v for k, v in topics.topic_config(name).items()
    }
    config["min.insync.replicas"] = 2
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {
            "name": name.replace(".", "-"),
            "namespace": "kafka",
            "labels": {"strimzi.io/cluster": "lethe-kafka"},
        },
        "spec": {"topicName": name, "partitions": PARTITIONS, "replicas": 3, "config": config},
    }


def documents() -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {}
    for name in ("intake", "tracker", *WORKERS):
        docs = [deployment(name), pdb(name)]
        if name in WORKERS:
            docs.append(scaled_object(name, f"lethe-worker-{name}", topics.command_topic(name)))
        elif name == "tracker":
            docs.append(scaled_object(name, "lethe-tracker", topics.OUTCOMES))
        files[f"{name}.yaml"] = docs
    files["intake.yaml"].append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "lethe-api", "namespace": NAMESPACE, "labels": labels("intake")},
            "spec": {
                "selector": labels("intake"),
                "ports": [{"name": "http", "port": 80, "targetPort": API_PORT}],
            },
        }
    )
    files["recordings.yaml"].append(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "lethe-recordings", "namespace": NAMESPACE},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}}},
        }
    )
    files["topics.yaml"] = [kafka_topic(t) for t in topics.all_topics()]
    files["config.yaml"] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "lethe-config", "namespace": NAMESPACE},
            "data": {
                "LETHE_KAFKA_BOOTSTRAP": "lethe-kafka-bootstrap.kafka:9092",
                "LETHE_KAFKA_IDEMPOTENT_PRODUCER": "true",
                "LETHE_KAFKA_FETCH_MAX_WAIT_MS": "50",
                "LETHE_KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
                "LETHE_KAFKA_REPLICATION_FACTOR": "3",
                "LETHE_LDAP_URL": "ldaps://directory.example.internal:636",
                "LETHE_LDAP_BIND_DN": "cn=lethe,ou=services,dc=example,dc=com",
                "LETHE_LDAP_BASE_DN": "dc=example,dc=com",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
                "LETHE_LOG_LEVEL": "INFO",
                "PYTHONDONTWRITEBYTECODE": "1",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "lethe-ldap-ca", "namespace": NAMESPACE},
            "type": "Opaque",
            "stringData": {"ca.crt": "CHANGE-ME: the PEM of the CA that signs the directory's certificate"},
        },
        # An example: create the real one from your secret store (sealed-secrets, external-secrets…).
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "lethe-keys", "namespace": NAMESPACE},
            "type": "Opaque",
            "stringData": {
                k: "CHANGE-ME"
                for k in (
                    "LETHE_IDENTIFIER_KEY",
                    "LETHE_PSEUDONYM_KEY",
                    "LETHE_MAILING_SUPPRESSION_KEY",
                    "LETHE_CALLBACK_SECRET",
                    "LETHE_BOOTSTRAP_TOKENS",
                    "LETHE_LDAP_PASSWORD",
                )
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "lethe-secrets", "namespace": NAMESPACE},
            "type": "Opaque",
            "stringData": {
                f"database-url-{n}": f"postgresql://lethe:CHANGE-ME@postgres.db:5432/lethe_{n}"
                for n in ("intake", "tracker", *WORKERS)
            },
        },
    ]
    return files


def kustomization() -> str:
    resources = ["config.yaml", "topics.yaml", *(f"{n}.yaml" for n in ("intake", "tracker", *WORKERS))]
    return yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources},
        sort_keys=False,
    )


def render() -> dict[str, str]:
    header = "# Generated by deploy/k8s/render.py from the code; edit that, not this.\n"
    rendered = {
        name: header + yaml.safe_dump_all(docs, sort_keys=False) for name, docs in documents().items()
    }
    rendered["kustomization.yaml"] = header + kustomization()
    return rendered


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text)
    print(f"wrote {len(render())} files to {HERE}")
