"""The metrics every service may record. Labels are request types, statuses, systems, actions
and topics: never ids of people, never request ids."""

from __future__ import annotations

from opentelemetry import metrics

METER = metrics.get_meter("lethe")

requests_submitted = METER.create_counter(
    "lethe_requests_submitted", description="Requests accepted by intake"
)
request_id_conflicts = METER.create_counter(
    "lethe_request_id_conflicts",
    description="Submissions refused with 409 for a request id already used; by whether the id is"
    " another submitter's (a tool that squats on ids another will use blocks its requests)",
)
requests_completed = METER.create_counter(
    "lethe_requests_completed", description="Requests reaching a final status"
)
request_duration = METER.create_histogram(
    "lethe_request_duration",
    unit="s",
    description="Receipt to final status",
)
outcomes = METER.create_counter("lethe_records", description="Records acted on, by system and action")
retries = METER.create_counter("lethe_command_retries", description="Commands sent to a retry topic")
dead_letters = METER.create_counter(
    "lethe_dead_letters", description="Messages sent to the dead-letter topic"
)
redispatches = METER.create_counter("lethe_redispatches", description="Commands re-sent to a silent system")
consumer_lag = METER.create_gauge("lethe_consumer_lag", description="Messages behind the end of a partition")
outbox_backlog = METER.create_gauge("lethe_outbox_backlog", description="Outbox rows not yet published")
overdue_requests = METER.create_gauge(
    "lethe_requests_overdue", description="Open requests past their deadline"
)
offset_gaps = METER.create_counter(
    "lethe_consumer_offset_gaps", description="Fetches that skipped offsets and were made again"
)
holds_complete = METER.create_gauge(
    "lethe_holds_complete",
    description="1 while a worker's holds are confirmed complete; 0 while it holds erasures back",
)
erasures_held_back = METER.create_counter(
    "lethe_erasures_held_back", description="Erasures put back to wait for holds to be confirmed"
)
