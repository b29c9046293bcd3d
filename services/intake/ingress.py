"""Submissions on the ingress topic (`lethe.requests.v1`), with the HTTP API's body. Each gets
a reply on `lethe.requests.replies.v1`: accepted, or the error naming the field. They carry no
token: their submitter is the topic (scope.INGRESS), so an id used over HTTP is a conflict here
and the other way round, and no submitter token reads what arrived on the topic."""

from __future__ import annotations

import json
import logging
import re

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.intake import scope, store
from services.intake.models import SubmitRequest
from services.intake.service import IntakeContext, Unacceptable, accept
from shared import topics
from shared.codec import describe_validation_error, encode
from shared.contracts.base import REQUEST_ID_PATTERN
from shared.contracts.events import IngressReplied
from shared.delivery import Publisher

log = logging.getLogger(__name__)


async def handle(ctx: IntakeContext, raw: bytes | None) -> IngressReplied:
    request_id = None
    try:
        data = json.loads(raw or b"")
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, brackets too deep, a number too long
        return IngressReplied(request_id=None, accepted=False, error="(body): not JSON")
    try:
        given = data.get("request_id") if isinstance(data, dict) else None
        if isinstance(given, str) and re.fullmatch(REQUEST_ID_PATTERN, given):
            request_id = given  # echoed only when it is an id (an address in its place is not)
        body = SubmitRequest.model_validate(data)
        row = await accept(ctx, body, scope.INGRESS)
    except ValidationError as exc:
        field, reason = describe_validation_error(exc)
        return IngressReplied(request_id=request_id, accepted=False, error=f"{field}: {reason}")
    except Unacceptable as exc:
        return IngressReplied(request_id=request_id, accepted=False, error=str(exc))
    except store.Conflict:
        return IngressReplied(
            request_id=request_id, accepted=False, error="request_id: already used for a different request"
        )
    return IngressReplied(
        request_id=row["request_id"], accepted=True, status=row["status"], deadline=row["deadline"]
    )


async def reply(ctx: IntakeContext, publisher: Publisher, record: ConsumerRecord[bytes, bytes]) -> None:
    answer = await handle(ctx, record.value)
    if not answer.accepted:
        log.info("ingress submission refused", extra={"offset": record.offset, "error": answer.error})
    # Keyed by the validated id, never the submitter's record key: that could be anything (an
    # e-mail address), and the replies topic is read by more than the submitter.
    key = answer.request_id.encode() if answer.request_id else b"unknown"
    await publisher.publish(topics.INGRESS_REPLIES, key, encode(answer))
