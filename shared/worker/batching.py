"""A fetch's commands carried out together, in one unit of a store that has them
(`BatchingAdapter`: one PostgreSQL transaction, shared/worker/pgbatch.py), their outcomes
reported only once it is committed.

A batch that fails anywhere (a command's store error, a verification not confirmed, holds that
cannot be confirmed, a lock waited for longer than shared.db.BATCH_LOCK_WAIT_MS, a deadlock) is
undone whole, and its commands are carried out one by one as if it had not been tried: each
then ends with its own outcome, retry or dead letter, so one failing command never fails or
holds up its neighbours. Commands are carried out in the order
they were fetched, so a subject's stay in order."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Span

from shared import topics
from shared.codec import encode
from shared.contracts import OutcomeReported, SubjectCommand
from shared.identity import KnownIdentities
from shared.telemetry.messaging import consumer_span
from shared.worker.attempts import OPENING_ERRORS, Attempts
from shared.worker.ports import BatchingAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Opened:
    record: ConsumerRecord[bytes, bytes]
    command: SubjectCommand
    identities: KnownIdentities
    span: Span  # the message's, kept open from its work until its outcome is sent


async def carry_out_together(
    attempts: Attempts,
    store: BatchingAdapter,
    records: Sequence[ConsumerRecord[bytes, bytes]],
    group: str,
) -> list[ConsumerRecord[bytes, bytes]]:
    """First tries of `records`' commands in one unit of `store`, reported once it is committed
    (the outcomes handed to the producer together, in the order of the commands). Returns
    the records left to be carried out one by one: all that could be opened, if it failed.
    Poison messages are dead-lettered as they are met."""
    opened: list[_Opened] = []
    try:
        for record in records:
            span = consumer_span(record, group)
            span.set_attribute("lethe.system", attempts.system)
            try:
                command, identities = attempts.open(record)
            except OPENING_ERRORS as exc:
                with trace.use_span(span, end_on_exit=True):
                    await attempts.poison(record, exc)
                continue
            opened.append(_Opened(record, command, identities, span))
        if not opened:
            return []
        try:
            outcomes = await _in_one_unit(attempts, store, opened)
        except Exception as exc:  # the type only: a message may quote the input
            log.warning(
                "batch undone; its commands carried out one by one",
                extra={"system": attempts.system, "commands": len(opened), "error": type(exc).__name__},
            )
            for each in opened:
                each.span.set_attribute("lethe.batch.undone", True)
            return [each.record for each in opened]
        for each, outcome in zip(opened, outcomes, strict=True):
            with trace.use_span(each.span, end_on_exit=False):
                attempts.note(each.command, 1, outcome)
        await attempts.publisher.publish_all(
            [
                (topics.OUTCOMES, each.command.request_id.encode(), encode(outcome), each.span)
                for each, outcome in zip(opened, outcomes, strict=True)
            ]
        )
        return []
    finally:  # however it ends (stopping, cancelled too), every message's span is closed
        for each in opened:
            each.span.end()


async def _in_one_unit(
    attempts: Attempts, store: BatchingAdapter, opened: Sequence[_Opened]
) -> list[OutcomeReported]:
    outcomes: list[OutcomeReported] = []
    async with store.batch([each.command.message_id for each in opened]) as unit:
        for each in opened:
            each.span.set_attribute("lethe.batch.commands", len(opened))
            with trace.use_span(each.span, end_on_exit=False):
                outcomes.append(await attempts.carry_out(each.command, each.identities, unit.session))
    return outcomes
