"""Who may do what on the broker: one principal per service, each reading and writing exactly its
topics and joining exactly its consumer groups; the upstream DSAR tool, which may only submit on
the ingress topic and read the replies; the operator's `lethe dlq`; and the autoscaler, which
only looks at consumer lag. The Kubernetes manifests render these as Strimzi KafkaUser ACLs
(deploy/k8s/render.py); a test checks them against the topics each service's code uses."""

from __future__ import annotations

from dataclasses import dataclass

from shared import topics


@dataclass(frozen=True)
class Access:
    """Read: consume (with a group or by assignment); write: produce. `describe_lethe`: see the
    metadata of every Lethe topic, which `ensure_topics` lists at start (not their content)."""

    read: frozenset[str] = frozenset()
    write: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    group_prefixes: frozenset[str] = frozenset()
    describe_lethe: bool = False


TOPIC_PREFIX = "lethe."
# Every service keeps a sentinel record (shared/broker_memory) and may dead-letter.
_EVERY_SERVICE = Access(
    read=frozenset({topics.SENTINELS}),
    write=frozenset({topics.SENTINELS, topics.DEAD_LETTERS}),
    describe_lethe=True,
)


def _with(base: Access, read: set[str], write: set[str], groups: set[str]) -> Access:
    return Access(base.read | read, base.write | write, base.groups | groups, describe_lethe=True)


def services(systems: tuple[str, ...] = topics.SYSTEMS) -> dict[str, Access]:
    """Per service (the name its process and deployment go by)."""
    commands = {topics.command_topic(s) for s in systems}
    table = {
        "intake": _with(
            _EVERY_SERVICE,
            read={topics.REQUEST_STATUS, topics.INGRESS, topics.HOLDS, topics.NOTICES},  # holds: read back
            write={
                *commands,
                topics.REQUESTS_ACCEPTED,
                topics.NOTIFICATIONS,
                topics.HOLDS,
                topics.DEADLINES,
                topics.RETRIES,
                topics.REVIEWS,
                topics.INGRESS_REPLIES,
                topics.NOTICE_UPDATES,
            },
            groups={topics.INTAKE_STATUS_GROUP, topics.INGRESS_GROUP, topics.NOTICES_GROUP},
        ),
        "tracker": _with(
            _EVERY_SERVICE,
            read=set(topics.TRACKER_CONSUMES),
            write={*commands, topics.REQUEST_STATUS, topics.REQUESTS_COMPLETED, topics.NOTICES},
            groups={topics.TRACKER_GROUP},
        ),
    }
    for system in systems:
        table[system] = _with(
            _EVERY_SERVICE,
            read={topics.command_topic(system), topics.retry_topic(system), topics.HOLDS},
            write={topics.retry_topic(system), topics.OUTCOMES},
            groups={topics.worker_group(system), topics.worker_retry_group(system)},
        )
    return table


# The upstream DSAR tool: submits, reads the answer, the completions, and what it must tell the
# person (a restriction about to be lifted, Art. 18(3); a deadline extended, Art. 12(3)): topics
# published for it, with ids, statuses and counts, no identifiers. Nothing else, not even names.
UPSTREAM_READS = (topics.INGRESS_REPLIES, topics.REQUESTS_COMPLETED, topics.NOTIFICATIONS, topics.DEADLINES)
UPSTREAM = Access(
    read=frozenset(UPSTREAM_READS),
    write=frozenset({topics.INGRESS}),
    group_prefixes=frozenset({topics.UPSTREAM_GROUP_PREFIX}),
)


def operator(systems: tuple[str, ...] = topics.SYSTEMS) -> Access:
    """`lethe dlq`: reads the dead letters and sends each back where it came from, which is a
    topic some service consumes in a group (a retry topic's letters go to the main topic)."""
    retries = {topics.retry_topic(s) for s in systems}
    consumed = set().union(*(a.read for a in services(systems).values())) - {topics.SENTINELS} - retries
    return Access(
        read=frozenset({topics.DEAD_LETTERS}),
        write=frozenset(consumed),
        groups=frozenset({topics.DLQ_REPLAY_GROUP}),
        describe_lethe=True,
    )
