"""Intake's service layer: one way in for a request, whether it came over HTTP or the ingress
topic."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

import asyncpg
import httpcore
from opentelemetry import trace

from services.intake import scope, store
from services.intake.egress import Egress, ForbiddenTarget
from services.intake.fingerprint import Fingerprints
from services.intake.models import SubmitRequest
from shared.crypto import IdentifierSeal, subject_ref
from shared.deadlines import add_months
from shared.policy.model import categories_by_system, load_policy
from shared.policy.settings import PolicySettings
from shared.telemetry import metrics
from shared.telemetry.messaging import current_traceparent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntakeContext:
    pool: asyncpg.Pool
    systems: list[str]
    seal: IdentifierSeal
    pseudonym_key: str
    callbacks_enabled: bool = False
    egress: Egress = field(default_factory=Egress)
    # A callback carries a request's outcome and its signature: only over TLS, except on a
    # development stack whose receivers are plain-HTTP servers on this machine.
    callbacks_https_only: bool = True
    # The data categories of each system, from the retention policy the workers apply: a hold
    # naming a category none of its systems holds would protect nothing.
    categories: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: categories_by_system(load_policy(PolicySettings().policy_file))
    )

    @cached_property
    def fingerprints(self) -> Fingerprints:
        return Fingerprints(self.pseudonym_key)


class Unacceptable(ValueError):
    """A well-formed request this deployment cannot take; the message names the field."""


async def accept(ctx: IntakeContext, body: SubmitRequest, submitted_by: str) -> asyncpg.Record:
    """Validate against configuration, store, dispatch; `submitted_by` as scope.py spells it.
    Raises store.Conflict for a known id with another body or from another submitter,
    Unacceptable naming the field."""
    unknown = sorted(set(body.systems or ()) - set(ctx.systems))
    if unknown:
        # Named from our list, not echoed from the input: a 422 repeats nothing that was sent.
        raise Unacceptable(f"systems: {len(unknown)} unknown; known: {', '.join(sorted(ctx.systems))}")
    if body.callback_url and not ctx.callbacks_enabled:
        # Accepting it would promise a call that never comes.
        raise Unacceptable("callback_url: callbacks are not configured here (LETHE_CALLBACK_SECRET)")
    if body.callback_url and ctx.callbacks_https_only and body.callback_url.scheme != "https":
        raise Unacceptable("callback_url: must be https")
    if body.callback_url:
        try:
            await ctx.egress.check_url(str(body.callback_url))
        except (ForbiddenTarget, httpcore.ConnectError, UnicodeError):  # a label too long for IDNA
            # One answer for an internal address and for a name that does not resolve, so that
            # submissions cannot map which internal names exist.
            raise Unacceptable("callback_url: cannot be used as a callback target") from None

    metrics.requests_submitted.add(1, {"type": body.type.value})
    received_at = body.received_at or datetime.now(UTC)

    identities = body.subject.identities()
    span = trace.get_current_span().get_span_context()
    fingerprint = ctx.fingerprints.of(body)
    row, stored = await store.submit(
        ctx.pool,
        store.NewRequest(
            request_id=body.request_id,
            fingerprint=fingerprint,
            request_type=body.type.value,
            subject_ref=subject_ref(ctx.pseudonym_key, identities),
            sealed_identifiers=ctx.seal.seal(identities),
            systems=body.systems or list(ctx.systems),
            received_at=received_at,
            deadline=add_months(received_at, 1),
            trace_id=format(span.trace_id, "032x") if span.is_valid else None,
            traceparent=current_traceparent(),
            callback_url=str(body.callback_url) if body.callback_url else None,
            submitted_by=submitted_by,
        ),
    )
    if not stored and not scope.is_resubmission(
        row["submitted_by"],
        row["fingerprint"],
        submitted_by,
        ctx.fingerprints.candidates(body),
        ctx.fingerprints,
    ):
        # The submitter is told only "already used"; compliance sees whose it was, so that a
        # token taking ids another tool will use (they are often sequential) is noticed.
        other = row["submitted_by"] != submitted_by
        metrics.request_id_conflicts.add(1, {"submitter": "other" if other else "same"})
        log.warning(
            "request id already used", extra={"request_id": body.request_id, "other_submitter": other}
        )
        raise store.Conflict(body.request_id)
    return row
