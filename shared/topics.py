"""Every topic name, and every consumer group, in one place (the broker's ACLs are written from
them: shared/access.py). Versioned: a breaking contract change gets a new topic."""

from __future__ import annotations

SYSTEMS: tuple[str, ...] = ("billing", "crm", "recordings", "directory", "mailing")

INGRESS = "lethe.requests.v1"  # upstream submissions, same body as POST /v1/requests
INGRESS_REPLIES = "lethe.requests.replies.v1"  # accepted, or the validation error
REQUESTS_ACCEPTED = "lethe.requests.accepted.v1"
OUTCOMES = "lethe.outcomes.v1"
REQUEST_STATUS = "lethe.requests.status.v1"
REQUESTS_COMPLETED = "lethe.requests.completed.v1"
DEADLINES = "lethe.requests.deadlines.v1"
RETRIES = "lethe.requests.retries.v1"
REVIEWS = "lethe.reviews.v1"  # decisions on records that may be someone else's
HOLDS = "lethe.holds.v1"
NOTIFICATIONS = "lethe.notifications.v1"
# Notices to recipients (Art. 19): the tracker's commands to send them (identifiers sealed), and
# intake's reports on their delivery.
NOTICES = "lethe.notices.v1"
NOTICE_UPDATES = "lethe.notices.updates.v1"
DEAD_LETTERS = "lethe.deadletter.v1"
SENTINELS = "lethe.sentinels.v1"  # records whose loss tells a service the broker forgot (broker_memory)
# What the tracker consumes (services/tracker/handlers.CONSUMED, which a test keeps equal).
TRACKER_CONSUMES = (REQUESTS_ACCEPTED, OUTCOMES, HOLDS, DEADLINES, RETRIES, REVIEWS, NOTICE_UPDATES)

# Topics that carry a message now and then, not one per request: an operator's retry or
# extension, a reviewer's decision, a hold, a dead letter, a sentinel. Partitions buy nothing
# here (one consumer reads them; order per key is all that is needed), and on the embedded
# broker every partition in a fetch costs CPU each time it is asked (docs/performance.md, fourth
# part), so a stack may give these fewer (LETHE_KAFKA_CONTROL_TOPIC_PARTITIONS).
CONTROL_TOPICS = frozenset({DEADLINES, RETRIES, REVIEWS, HOLDS, NOTIFICATIONS, DEAD_LETTERS, SENTINELS})

INTAKE_STATUS_GROUP = "lethe-intake-status"
INGRESS_GROUP = "lethe-intake-ingress"
NOTICES_GROUP = "lethe-intake-notices"
TRACKER_GROUP = "lethe-tracker"
DLQ_REPLAY_GROUP = "lethe-dlq-replay"
UPSTREAM_GROUP_PREFIX = "lethe-upstream"  # an upstream DSAR tool reads its replies in groups named so


DAY_MS = 24 * 3600 * 1000
# How long the broker keeps each kind of topic. Ingress bodies carry e-mails and phone numbers in
# clear and are consumed at once; a dead letter (its body sealed) is for an engineer to look at,
# and a request whose command died stays `failed` in intake, to be retried from there. Commands
# carry sealed identifiers: no longer than a command can usefully wait. Holds and sentinels are
# kept for ever (a deleted sentinel reads as a broker that forgot: needless re-sending).
RETENTION_MS = {
    "ingress": 1 * DAY_MS,
    "deadletter": 1 * DAY_MS,
    "command": 7 * DAY_MS,
    "event": 30 * DAY_MS,
    "holds": -1,
    "sentinel": -1,
}


def topic_kind(name: str) -> str:
    if name == INGRESS:
        return "ingress"
    if name == DEAD_LETTERS:
        return "deadletter"
    if name == HOLDS:
        return "holds"
    if name == SENTINELS:
        return "sentinel"
    # Notices carry sealed identifiers, like commands: kept no longer than a command.
    return "command" if name.startswith("lethe.commands.") or name == NOTICES else "event"


def topic_config(name: str) -> dict[str, str]:
    """What a topic is created with, by the services (ensure_topics) and in Kubernetes (Strimzi)."""
    kind = topic_kind(name)
    config = {"retention.ms": str(RETENTION_MS[kind])}
    if kind == "holds":
        config["cleanup.policy"] = "compact"  # the latest state of each hold, for ever
    return config


def fixed_partition(name: str) -> int | None:
    """The partition every message of a topic is sent to; None: by key. Every holds message
    goes to partition 0, whatever the topic's count: a reader then cannot miss a hold sent to a
    partition it does not read yet (one added to the topic on a running cluster is seen by a
    reader only at its next metadata refresh), and the marker stays behind every hold it
    lists. Compaction keeps each hold's latest version all the same: it works by key."""
    return 0 if name == HOLDS else None


# Topics whose every message is the whole state of its key, ordered by a version inside it
# (readers keep the newest): an older message not yet sent is worth nothing once a newer one
# of its key is written, and the outbox relay sends only the newest of a batch.
SNAPSHOTS = frozenset({REQUEST_STATUS})


def command_topic(system: str) -> str:
    return f"lethe.commands.{system}.v1"


def all_topics(systems: tuple[str, ...] = SYSTEMS) -> list[str]:
    return [
        *(command_topic(s) for s in systems),
        *(retry_topic(s) for s in systems),
        INGRESS,
        INGRESS_REPLIES,
        REQUESTS_ACCEPTED,
        OUTCOMES,
        REQUEST_STATUS,
        REQUESTS_COMPLETED,
        DEADLINES,
        RETRIES,
        REVIEWS,
        HOLDS,
        NOTIFICATIONS,
        NOTICES,
        NOTICE_UPDATES,
        DEAD_LETTERS,
        SENTINELS,
    ]


def retry_topic(system: str) -> str:
    """Where a system's failing commands wait for their next try, off the main topic's path."""
    return f"lethe.commands.{system}.retry.v1"


def worker_group(system: str) -> str:
    return f"lethe-worker-{system}"


def worker_retry_group(system: str) -> str:
    return f"{worker_group(system)}-retry"


def consumer_groups(systems: tuple[str, ...] = SYSTEMS) -> dict[str, tuple[str, ...]]:
    """Each of Lethe's consumer groups and the topics it consumes (the services' subscriptions;
    a test keeps them equal to shared/access.py). What each has committed against the topics'
    ends says whether everything produced has been read (cli/shedding.py)."""
    groups: dict[str, tuple[str, ...]] = {
        INGRESS_GROUP: (INGRESS,),
        INTAKE_STATUS_GROUP: (REQUEST_STATUS,),
        NOTICES_GROUP: (NOTICES,),
        TRACKER_GROUP: TRACKER_CONSUMES,
    }
    for system in systems:
        groups[worker_group(system)] = (command_topic(system),)
        groups[worker_retry_group(system)] = (retry_topic(system),)
    return groups
