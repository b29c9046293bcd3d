"""Notices to recipients (GDPR Art. 19): the command that has one sent, the event that says how
its delivery went, the report's entry for it, and the body a recipient receives (its JSON
Schema is published as deploy/notice.schema.json)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from shared.contracts.base import Frozen, Message, RequestType, SystemName

RecipientId = str  # pattern enforced by the register (shared/recipients/register.py)
# The register is checked against these at start-up (a longer one would dead-letter an outcome).
MAX_CATEGORY_LENGTH = 64
MAX_NOTICE_CATEGORIES = 200


class NoticeState(StrEnum):
    PENDING = "pending"  # to send (webhook, perhaps after failed tries) or a task open (manual)
    DELIVERED = "delivered"  # a 2xx; the recipient's own acknowledgement is still awaited
    ACKNOWLEDGED = "acknowledged"  # by the 2xx, by the recipient's POST, or closed by compliance
    FAILED = "failed"  # every try failed: compliance must tell the recipient another way

    @property
    def settled(self) -> bool:
        """Nothing more will be tried on its own."""
        return self is not NoticeState.PENDING


class NoticeCategory(Frozen):
    """A category whose records the request changed, and how many of each kind of change.
    Empty `counts` on a lift notice: it is sent before the lift, whose counts are not known."""

    system: SystemName
    category: str = Field(max_length=MAX_CATEGORY_LENGTH)
    counts: dict[Literal["erased", "anonymised", "restricted", "unrestricted"], int] = Field(
        default_factory=dict
    )


class NotifyRecipient(Message):
    """The tracker decided a recipient must be told of a request's outcome: intake sends it (a
    webhook) or opens a task for compliance (manual). The identifiers are only the kinds the
    recipient already holds, sealed."""

    command: Literal["notify_recipient"] = "notify_recipient"
    notice_id: UUID
    recipient_id: RecipientId = Field(max_length=64)
    request_type: RequestType
    categories: list[NoticeCategory] = Field(min_length=1, max_length=MAX_NOTICE_CATEGORIES)
    sealed_identifiers: str | None = Field(None, max_length=65_536)
    must_acknowledge: bool
    acknowledge_by: AwareDatetime | None = None


class NoticeUpdated(Message):
    """How a notice's delivery went: a try failed (still `pending`), it was delivered,
    acknowledged or given up. A note given on closing stays in intake; its digest is audited."""

    event: Literal["notice_updated"] = "notice_updated"
    notice_id: UUID
    recipient_id: RecipientId = Field(max_length=64)
    state: NoticeState
    attempts: int = Field(ge=0)
    at: AwareDatetime
    error: str | None = Field(None, max_length=500)
    acknowledged_via: Literal["response", "recipient", "compliance"] | None = None
    note_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    closed_by: str | None = Field(
        None, max_length=64, description="The id of the token that closed or acknowledged it"
    )


class RecipientNotice(Frozen):
    """The report's evidence for one recipient: who was told, how, when, what they answered."""

    notice_id: UUID
    recipient_id: RecipientId
    name: str
    role: Literal["processor", "controller", "public"]
    channel: Literal["webhook", "manual"]
    categories: list[NoticeCategory]
    must_acknowledge: bool
    state: NoticeState = NoticeState.PENDING
    planned_at: AwareDatetime
    acknowledge_by: AwareDatetime | None = None
    attempts: int = 0
    delivered_at: AwareDatetime | None = None
    acknowledged_at: AwareDatetime | None = None
    acknowledged_via: Literal["response", "recipient", "compliance"] | None = None
    acknowledged_by: str | None = Field(
        None, description="The id of the token that acknowledged or closed it"
    )
    error: str | None = None

    @property
    def awaited(self) -> bool:
        """The request waits for it: an acknowledgement the register requires, not yet given."""
        return self.must_acknowledge and self.state is not NoticeState.ACKNOWLEDGED


class NoticeBody(Frozen):
    """What a recipient's webhook receives (POST, JSON, signed: README, Recipients)."""

    notice_schema_version: Literal[1] = 1
    notice_id: UUID
    request_id: str
    type: RequestType = Field(description="erasure, restriction or lift_restriction")
    recipient_id: str
    categories: list[NoticeCategory]
    identifiers: dict[Literal["customer_ids", "emails", "phones", "ldap_uids"], list[str]] = Field(
        description="Only the kinds the register says the recipient already holds"
    )
    must_acknowledge: bool
    acknowledge_by: AwareDatetime | None = None
    acknowledge_url: str | None = Field(None, description="Where to POST the acknowledgement, if one is due")
    sent_at: AwareDatetime
