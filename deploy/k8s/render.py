"""Renders the Kubernetes manifests in this folder from the code's own lists (services, topics,
settings), so they cannot drift: `python deploy/k8s/render.py` rewrites them, and a test fails
when the committed files differ from what it would write.

Per service: a Deployment (non-root, probes on /readyz and /healthz), a PodDisruptionBudget;
workers and the tracker also get a KEDA ScaledObject that scales on consumer-group lag. Each
service reaches Kafka as its own KafkaUser (SCRAM-SHA-512 over TLS), whose ACLs allow exactly
its topics and groups; the cluster, topics and users are Strimzi resources (strimzi.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import strimzi

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
        # Its own KafkaUser: the password is in the Secret Strimzi's User Operator writes.
        {"name": "LETHE_KAFKA_SASL_USERNAME", "value": strimzi.user_name(name)},
        {
            "name": "LETHE_KAFKA_SASL_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": strimzi.user_name(name), "key": "password"}},
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
    # The CA that signs the brokers' certificates: LETHE_KAFKA_SSL_CAFILE (config.yaml).
    container["volumeMounts"] = [{"name": "kafka-ca", "mountPath": strimzi.CA_DIR, "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "kafka-ca", "secret": {"secretName": strimzi.CA_SECRET}}]
    if name == "recordings":
        container["env"].append({"name": "LETHE_RECORDINGS_DIR", "value": "/var/lib/lethe/recordings"})
        container["volumeMounts"].append({"name": "recordings", "mountPath": "/var/lib/lethe/recordings"})
        volumes.append({"name": "recordings", "persistentVolumeClaim": {"claimName": "lethe-recordings"}})
    if name == "directory":  # the CA that signs the directory's certificate: ldaps:// is verified
        container["env"].append({"name": "LETHE_LDAP_CA_FILE", "value": "/etc/lethe/ldap/ca.crt"})
        container["volumeMounts"].append(
            {"name": "ldap-ca", "mountPath": "/etc/lethe/ldap", "readOnly": True}
        )
        volumes.append({"name": "ldap-ca", "secret": {"secretName": "lethe-ldap-ca"}})
    # A read-only root: the only writable places are /tmp and, for recordings, the volume.
    container["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"})  # noqa: S108
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
                    # Every service, intake too, serves /metrics on its health port, never the API's.
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(HEALTH_PORT)},
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
            "maxReplicaCount": strimzi.PARTITIONS,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "kafka",
                    "metadata": {
                        "bootstrapServers": strimzi.BOOTSTRAP,
                        "consumerGroup": group,
                        "topic": topic,
                        "lagThreshold": "50",
                        "offsetResetPolicy": "earliest",
                    },
                    "authenticationRef": {"name": "lethe-kafka"},  # strimzi.keda_authentication
                }
            ],
        },
    }


def documents() -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {}
    for name in ("intake", "tracker", *WORKERS):
        docs = [deployment(name), pdb(name)]
        if name in WORKERS:
            docs.append(scaled_object(name, topics.worker_group(name), topics.command_topic(name)))
        elif name == "tracker":
            docs.append(scaled_object(name, topics.TRACKER_GROUP, topics.OUTCOMES))
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
    files["kafka.yaml"] = strimzi.cluster(NAMESPACE)
    files["topics.yaml"] = [strimzi.kafka_topic(t) for t in topics.all_topics()]
    files["users.yaml"] = strimzi.users(NAMESPACE) + strimzi.keda_authentication(NAMESPACE)
    files["config.yaml"] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "lethe-config", "namespace": NAMESPACE},
            "data": {
                "LETHE_KAFKA_BOOTSTRAP": strimzi.BOOTSTRAP,
                "LETHE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "LETHE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "LETHE_KAFKA_SSL_CAFILE": f"{strimzi.CA_DIR}/ca.crt",
                "LETHE_KAFKA_IDEMPOTENT_PRODUCER": "true",
                "LETHE_KAFKA_FETCH_MAX_WAIT_MS": "50",
                "LETHE_KAFKA_TOPIC_PARTITIONS": str(strimzi.PARTITIONS),
                "LETHE_KAFKA_REPLICATION_FACTOR": "3",
                "LETHE_LDAP_URL": "ldaps://directory.example.internal:636",
                "LETHE_LDAP_BIND_DN": "cn=lethe,ou=services,dc=example,dc=com",
                "LETHE_LDAP_BASE_DN": "dc=example,dc=com",
                # Subscribers only: the worker's own bind entry and the staff live elsewhere.
                "LETHE_LDAP_SUBJECT_BASES": "ou=people,dc=example,dc=com",
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
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": strimzi.CA_SECRET, "namespace": NAMESPACE},
            "type": "Opaque",
            "stringData": {
                "ca.crt": "CHANGE-ME: ca.crt of kafka/lethe-kafka-cluster-ca-cert (Strimzi's cluster CA)"
            },
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
    resources = [
        "config.yaml",
        "kafka.yaml",
        "topics.yaml",
        "users.yaml",
        *(f"{n}.yaml" for n in ("intake", "tracker", *WORKERS)),
    ]
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
