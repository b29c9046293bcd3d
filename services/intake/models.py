"""The HTTP API's request and response bodies."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    field_validator,
    model_validator,
)

from shared.contracts import RequestStatus, RequestType, SystemProgress
from shared.contracts.base import RequestId, SystemName
from shared.identity import MAX_IDENTIFIERS, Email, Identities, OpaqueId, Phone


def _storable(text: str) -> str:
    """Text a person wrote (a reason, a note): any line breaks and tabs, no other control
    characters. PostgreSQL cannot store NUL, and the refusal came as a 500."""
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text):
        raise ValueError("holds a control character")
    return text


# A reason or note, kept in intake (its digest may be audited): 3 to 2,000 characters.
FreeText = Annotated[str, StringConstraints(min_length=3, max_length=2000), AfterValidator(_storable)]


class SubjectIn(BaseModel):
    """Who the request is about. Any identifier may be absent, but not all of them."""

    model_config = ConfigDict(extra="forbid")

    customer_id: OpaqueId | None = None
    emails: list[Email] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)
    phones: list[Phone] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)
    ldap_uid: OpaqueId | None = None

    @model_validator(mode="after")
    def _names_someone(self) -> SubjectIn:
        if not (self.customer_id or self.emails or self.phones or self.ldap_uid):
            raise ValueError("subject: give at least one of customer_id, emails, phones, ldap_uid")
        return self

    def identities(self) -> Identities:
        return Identities(
            customer_ids=[self.customer_id] if self.customer_id else [],
            emails=self.emails,
            phones=self.phones,
            ldap_uids=[self.ldap_uid] if self.ldap_uid else [],
        )


CLOCK_SKEW = timedelta(minutes=5)
GDPR_APPLIES = datetime(2018, 5, 25, tzinfo=UTC)


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId = Field(description="The upstream system's id; also the idempotency key.")
    type: RequestType
    subject: SubjectIn
    systems: list[SystemName] | None = Field(
        None, min_length=1, max_length=32, description="A subset of systems; all when absent."
    )
    received_at: AwareDatetime | None = Field(
        None, description="When the upstream system received the request; the deadline counts from it."
    )
    identity_verified: Literal[True] = Field(
        description="The upstream system verified the requester's identity (must be true)."
    )
    callback_url: HttpUrl | None = Field(
        None, description="POSTed the final status (HMAC-signed, retried) when the request completes."
    )

    @field_validator("systems")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else sorted(set(value))

    @model_validator(mode="after")
    def _not_in_future(self) -> SubmitRequest:
        if self.received_at is None:
            return self
        if self.received_at > datetime.now(UTC) + CLOCK_SKEW:  # the sender's clock may run ahead a little
            raise ValueError("received_at: is in the future")
        if self.received_at < GDPR_APPLIES:
            raise ValueError("received_at: before the GDPR applied (2018-05-25)")
        return self

    def digest(self) -> str:
        """An unkeyed hash of what the body asks for, the same however it is written: key order,
        the order and spelling of identifiers, a repeated one, a uid's case, the offset a time is
        written with. (A resubmission written otherwise was a 409 to the tool that sent it.)
        Never stored as it is: it would confirm a guessed identifier to anyone who reads it
        (fingerprint.py keys it)."""
        canonical = {
            "request_id": self.request_id,
            "type": self.type.value,
            "subject": self.subject.identities().canonical(),
            "systems": self.systems,
            "received_at": None if self.received_at is None else self.received_at.astimezone(UTC).isoformat(),
            "callback_url": None if self.callback_url is None else str(self.callback_url),
        }
        return "c1:" + hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()

    def legacy_digest(self) -> str:
        """The digest of the body as written, which versions before `digest` stored."""
        return hashlib.sha256(self.model_dump_json(exclude_none=True).encode()).hexdigest()


class RequestView(BaseModel):
    request_id: str
    type: RequestType
    status: RequestStatus
    subject_ref: str
    systems: list[str]
    received_at: datetime
    deadline: datetime
    overdue: bool
    progress: list[SystemProgress] = Field(default_factory=list)
    completed_at: datetime | None = None
    trace_id: str | None = None
    extension_months: int | None = None


class ErrorBody(BaseModel):
    detail: str
