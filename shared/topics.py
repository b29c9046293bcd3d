"""Every topic name in one place. Versioned: a breaking contract change gets a new topic."""

from __future__ import annotations

SYSTEMS: tuple[str, ...] = ("billing", "crm", "recordings", "directory", "mailing")

REQUESTS_ACCEPTED = "lethe.requests.accepted.v1"
OUTCOMES = "lethe.outcomes.v1"
REQUEST_STATUS = "lethe.requests.status.v1"
REQUESTS_COMPLETED = "lethe.requests.completed.v1"
DEAD_LETTERS = "lethe.deadletter.v1"


def command_topic(system: str) -> str:
    return f"lethe.commands.{system}.v1"


def all_topics(systems: tuple[str, ...] = SYSTEMS) -> list[str]:
    return [
        *(command_topic(s) for s in systems),
        REQUESTS_ACCEPTED,
        OUTCOMES,
        REQUEST_STATUS,
        REQUESTS_COMPLETED,
        DEAD_LETTERS,
        HOLDS,
        NOTIFICATIONS,
    ]


HOLDS = "lethe.holds.v1"
NOTIFICATIONS = "lethe.notifications.v1"
