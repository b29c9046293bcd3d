"""What every message on the wire has: a schema version, an id for de-duplication, a time,
and the request it belongs to."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

# Upstream ids double as message keys and idempotency keys, so they are restricted to an opaque
# alphabet: an e-mail address used as a ticket id would otherwise leak into Kafka keys and spans.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
SystemName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
SubjectRef = Annotated[str, StringConstraints(pattern=r"^subj_[0-9a-f]{32}$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


class RequestType(StrEnum):
    ERASURE = "erasure"  # GDPR Art. 17
    RESTRICTION = "restriction"  # Art. 18(1)
    LIFT_RESTRICTION = "lift_restriction"  # Art. 18(3)


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Envelope(Frozen):
    schema_version: Literal[1] = 1
    message_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)


class Message(Envelope):
    """A message about one data-subject request."""

    request_id: RequestId
