"""The Kafka side of the manifests, for the Strimzi operator: the cluster, whose only listener
takes SCRAM-SHA-512 over TLS and whose authoriser denies what no ACL allows; a KafkaTopic per
topic with its retention (shared/topics.py); a KafkaUser per principal with its ACLs
(shared/access.py); and what KEDA needs to read consumer lag through that listener.

The User Operator must watch the `lethe` namespace (set below), so that each KafkaUser's Secret
(its password) lands where the deployment that uses it runs. The cluster CA certificate must be
copied from `kafka/lethe-kafka-cluster-ca-cert` into the `lethe-kafka-ca` Secret of `lethe`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared import access, topics

CLUSTER = "lethe-kafka"
KAFKA_NAMESPACE = "kafka"
LISTENER_PORT = 9093
BOOTSTRAP = f"{CLUSTER}-kafka-bootstrap.{KAFKA_NAMESPACE}:{LISTENER_PORT}"
PARTITIONS = 12
CA_SECRET = "lethe-kafka-ca"  # noqa: S105 - a Secret's name: ca.crt, the cluster CA, copied to lethe
CA_DIR = "/etc/lethe/kafka"
KEDA_USER = "lethe-keda"
STRIMZI_LABELS = {"strimzi.io/cluster": CLUSTER}


def user_name(principal: str) -> str:
    """The KafkaUser, its SASL user name and the Secret Strimzi writes its password to."""
    return f"lethe-{principal}"


def kafka_topic(name: str) -> dict[str, Any]:
    """Retention and clean-up as the services create topics themselves (topics.topic_config)."""
    config: dict[str, Any] = {
        k: int(v) if k == "retention.ms" else v for k, v in topics.topic_config(name).items()
    }
    config["min.insync.replicas"] = 2
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": name.replace(".", "-"), "namespace": KAFKA_NAMESPACE, "labels": STRIMZI_LABELS},
        "spec": {"topicName": name, "partitions": PARTITIONS, "replicas": 3, "config": config},
    }


def _acl(kind: str, name: str, operations: list[str], pattern: str = "literal") -> dict[str, Any]:
    return {
        "resource": {"type": kind, "name": name, "patternType": pattern},
        "operations": operations,
        "host": "*",
    }


def acls(grant: access.Access) -> list[dict[str, Any]]:
    """Read and Write imply Describe in Kafka's authoriser; Describe is listed for clarity."""
    rules = [_acl("topic", t, ["Read", "Describe"]) for t in sorted(grant.read - grant.write)]
    rules += [_acl("topic", t, ["Read", "Write", "Describe"]) for t in sorted(grant.read & grant.write)]
    rules += [_acl("topic", t, ["Write", "Describe"]) for t in sorted(grant.write - grant.read)]
    rules += [_acl("group", g, ["Read"]) for g in sorted(grant.groups)]
    rules += [_acl("group", g, ["Read"], "prefix") for g in sorted(grant.group_prefixes)]
    if grant.describe_lethe:
        rules.append(_acl("topic", access.TOPIC_PREFIX, ["Describe"], "prefix"))
    return rules


def kafka_user(name: str, rules: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaUser",
        "metadata": {"name": name, "namespace": namespace, "labels": STRIMZI_LABELS},
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": "simple", "acls": rules},
        },
    }


def users(namespace: str) -> list[dict[str, Any]]:
    """A user per service, the upstream DSAR tool, the operator's `lethe dlq`, and KEDA (which
    only describes topics and groups: lag)."""
    principals = {**access.services(), "upstream": access.UPSTREAM, "operator": access.operator()}
    docs = [kafka_user(user_name(p), acls(grant), namespace) for p, grant in principals.items()]
    keda = [
        _acl("topic", access.TOPIC_PREFIX, ["Describe"], "prefix"),
        _acl("group", "lethe-", ["Describe"], "prefix"),
    ]
    docs.append(kafka_user(KEDA_USER, keda, namespace))
    return docs


def keda_authentication(namespace: str) -> list[dict[str, Any]]:
    """How the ScaledObjects' kafka triggers log in: SCRAM-SHA-512 over TLS, as the services do."""
    settings = "lethe-keda-kafka"
    refs = [
        ("sasl", settings, "sasl"),
        ("tls", settings, "tls"),
        ("username", settings, "username"),
        ("password", KEDA_USER, "password"),  # written by Strimzi's User Operator
        ("ca", CA_SECRET, "ca.crt"),
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": settings, "namespace": namespace},
            "type": "Opaque",
            "stringData": {"sasl": "scram_sha512", "tls": "enable", "username": KEDA_USER},
        },
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "TriggerAuthentication",
            "metadata": {"name": "lethe-kafka", "namespace": namespace},
            "spec": {
                "secretTargetRef": [{"parameter": p, "name": n, "key": k} for p, n, k in refs],
            },
        },
    ]


def cluster(users_namespace: str) -> list[dict[str, Any]]:
    """Three nodes, each controller and broker (KRaft). No plaintext listener, no anonymous
    access: a client without a KafkaUser gets nothing, one with a KafkaUser only its ACLs."""
    return [
        {
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "Kafka",
            "metadata": {
                "name": CLUSTER,
                "namespace": KAFKA_NAMESPACE,
                "annotations": {"strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"},
            },
            "spec": {
                "kafka": {
                    "version": "3.8.0",
                    "listeners": [
                        {
                            "name": "tls",
                            "port": LISTENER_PORT,
                            "type": "internal",
                            "tls": True,
                            "authentication": {"type": "scram-sha-512"},
                        }
                    ],
                    "authorization": {"type": "simple"},
                    "config": {
                        "auto.create.topics.enable": False,
                        "allow.everyone.if.no.acl.found": False,
                        "default.replication.factor": 3,
                        "min.insync.replicas": 2,
                        "offsets.topic.replication.factor": 3,
                        "transaction.state.log.replication.factor": 3,
                        "transaction.state.log.min.isr": 2,
                    },
                },
                "entityOperator": {
                    "topicOperator": {"watchedNamespace": KAFKA_NAMESPACE},
                    "userOperator": {"watchedNamespace": users_namespace},
                },
            },
        },
        {
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "KafkaNodePool",
            "metadata": {"name": "dual-role", "namespace": KAFKA_NAMESPACE, "labels": STRIMZI_LABELS},
            "spec": {
                "replicas": 3,
                "roles": ["controller", "broker"],
                "storage": {
                    "type": "jbod",
                    "volumes": [
                        {
                            "id": 0,
                            "type": "persistent-claim",
                            "size": "100Gi",
                            "deleteClaim": False,
                            "kraftMetadata": "shared",
                        }
                    ],
                },
            },
        },
    ]
