"""The broker's ACLs (shared/access.py) against the code: every topic and consumer group a
service's source names is granted to that service, and the upstream DSAR tool gets nothing but
submitting and reading its replies. A service that starts using a topic without its ACL would
be refused by the broker in production: this fails first."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services.tracker.handlers import CONSUMED
from shared import access, topics

ROOT = Path(__file__).resolve().parents[2]
EVERY_SERVICE = [ROOT / "shared" / "delivery.py", ROOT / "shared" / "broker_memory.py"]
# Only its partitions are asked for (readiness): metadata, which every service may describe.
DESCRIBED_ONLY = {"intake": {topics.OUTCOMES}}


def sources(principal: str) -> list[Path]:
    if principal in topics.SYSTEMS:
        folders = [ROOT / "shared" / "worker", ROOT / "services" / principal]
    else:
        folders = [ROOT / "services" / principal]
    return EVERY_SERVICE + [p for folder in folders for p in folder.rglob("*.py")]


def named(paths: list[Path], system: str | None) -> tuple[set[str], set[str]]:
    """(topics, groups) the source names: `topics.X` constants, and the per-system functions,
    for the worker's own system or, elsewhere, every system."""
    systems = [system] if system else list(topics.SYSTEMS)
    functions = {
        "command_topic": topics.command_topic,
        "retry_topic": topics.retry_topic,
        "worker_group": topics.worker_group,
        "worker_retry_group": topics.worker_retry_group,
    }
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "topics":
                value = getattr(topics, node.attr, None)
                if isinstance(value, str):
                    found.add(value)
                elif node.attr in functions:
                    found |= {functions[node.attr](s) for s in systems}
    groups = {n for n in found if not n.startswith(access.TOPIC_PREFIX)}
    return found - groups, groups


@pytest.mark.parametrize("principal", ["intake", "tracker", *topics.SYSTEMS])
def test_every_topic_and_group_a_service_names_is_granted_to_it(principal: str) -> None:
    grant = access.services()[principal]
    used, groups = named(sources(principal), principal if principal in topics.SYSTEMS else None)
    assert used, "the scan found nothing: fix the test"
    missing = used - grant.read - grant.write - DESCRIBED_ONLY.get(principal, set())
    assert not missing, f"{principal} uses {sorted(missing)} without an ACL (shared/access.py)"
    assert groups <= grant.groups, f"{principal}: groups {sorted(groups - grant.groups)}"


def test_the_tracker_reads_what_it_handles() -> None:
    assert set(CONSUMED) == set(topics.TRACKER_CONSUMES) <= access.services()["tracker"].read


def test_the_groups_whose_reading_a_shed_waits_for_are_every_services_groups_on_what_it_reads() -> None:
    """cli/shedding.py sheds the broker only once these groups have read their topics: a
    group left out, or a topic, would have its unread messages dropped with the old broker."""
    grants = access.services().values()
    expected = set().union(*(g.groups for g in grants))
    assert set(topics.consumer_groups()) == expected
    for group, consumed in topics.consumer_groups().items():
        owner = next(g for g in grants if group in g.groups)
        assert set(consumed) <= owner.read, group
    # Every topic a service reads is in some group's list but sentinels (each service reads its
    # own by assignment, and places it again after a shed).
    read_in_groups = set().union(*(g.read for g in grants)) - {topics.SENTINELS}
    assert read_in_groups == {t for ts in topics.consumer_groups().values() for t in ts}


def test_grants_name_only_topics_that_exist() -> None:
    every = [*access.services().values(), access.UPSTREAM, access.operator()]
    assert all(g.read | g.write <= set(topics.all_topics()) for g in every)


def test_the_upstream_tool_may_only_submit_and_read_its_replies_and_completions() -> None:
    assert access.UPSTREAM.write == {topics.INGRESS}
    assert access.UPSTREAM.read == {
        topics.INGRESS_REPLIES,
        topics.REQUESTS_COMPLETED,
        topics.NOTIFICATIONS,
        topics.DEADLINES,
    }
    assert not access.UPSTREAM.groups and not access.UPSTREAM.describe_lethe


def test_only_intake_reads_the_ingress_bodies_and_no_worker_reads_another_systems_commands() -> None:
    table = access.services()
    assert [p for p, g in table.items() if topics.INGRESS in g.read] == ["intake"]
    for system in topics.SYSTEMS:
        others = {topics.command_topic(s) for s in topics.SYSTEMS if s != system}
        assert not others & (table[system].read | table[system].write), system
