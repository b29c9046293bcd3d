"""Seed files written for one day load relative to another: every date moves together."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

from cli.seed import SeedFile, read
from cli.synthetic import people

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "seed" / "demo.json"


def test_every_date_and_time_moves_by_the_days_between_as_of_and_the_load() -> None:
    demo = read(DEMO)
    assert demo.as_of is not None
    later = demo.on(demo.as_of + timedelta(days=400))
    assert later.as_of == demo.as_of + timedelta(days=400)
    alice, moved = demo.people[0].billing[0], later.people[0].billing[0]
    assert moved.opened_on == alice.opened_on + timedelta(days=400)
    assert moved.invoices[1].issued_on == alice.invoices[1].issued_on + timedelta(days=400)
    start, start_moved = alice.call_detail_records[0].started_at, moved.call_detail_records[0].started_at
    assert start_moved - start == timedelta(days=400) and start_moved.tzinfo == start.tzinfo
    # Nothing but dates changes, and the file read is left as it was.
    assert moved.model_dump(
        exclude={"opened_on", "closed_on", "invoices", "payments", "call_detail_records", "radius_sessions"}
    ) == alice.model_dump(
        exclude={"opened_on", "closed_on", "invoices", "payments", "call_detail_records", "radius_sessions"}
    )
    assert read(DEMO) == demo


def test_a_file_without_as_of_loads_its_dates_as_written() -> None:
    seed = SeedFile.model_validate(
        {
            "people": [
                {
                    "label": "x",
                    "crm": [
                        {
                            "contact_id": "c",
                            "full_name": "X",
                            "created_on": "2001-02-03",
                            "interactions": [
                                {
                                    "interaction_id": "i",
                                    "channel": "call",
                                    "occurred_at": "2001-02-03T04:05:06+01:00",
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    )
    assert seed.on(date(2040, 1, 1)) == seed
    occurred = seed.people[0].crm[0].interactions[0].occurred_at
    assert occurred == datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=1)))


def test_only_keeps_the_lists_and_the_day_the_file_was_written_for() -> None:
    demo = read(DEMO)
    two = demo.only("alice", "ben")
    assert [p.label for p in two.people] == ["alice", "ben"]
    assert two.as_of == demo.as_of and two.mailing_lists == demo.mailing_lists


def test_synthetic_people_are_written_for_a_day_and_move_with_the_load() -> None:
    seed = people(1)
    assert seed.as_of is not None
    today = datetime.now(UTC).date()
    recorded = seed.on(today).people[0].recordings[0].recorded_at
    assert recorded.date() - today == seed.people[0].recordings[0].recorded_at.date() - seed.as_of
