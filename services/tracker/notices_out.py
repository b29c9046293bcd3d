"""The commands that have intake send the notices a saga planned, each with the identifiers
the recipient already holds (given or learnt), sealed: written with the saga, in its
transaction, so a plan is sent exactly when it is saved."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from services.tracker.recipients import installed, installed_seal
from shared import topics
from shared.contracts.notices import NotifyRecipient
from shared.crypto import IdentifierSeal
from shared.identity import Identities

if TYPE_CHECKING:
    from services.tracker.repository import Loaded


def planned_notices(loaded: Loaded) -> list[tuple[str, str, BaseModel]]:
    """The commands for the notices the saga planned since it was loaded (the plan is then
    taken: the caller writes them with the saga)."""
    saga = loaded.saga
    planned, saga.recipients.new = saga.recipients.new, []
    if not planned:
        return []
    seal = installed_seal()
    # Opened once for all the notices: each open decrypts.
    opened = seal.open(loaded.sealed_identifiers) if seal and loaded.sealed_identifiers else None
    return [
        (
            topics.NOTICES,
            saga.request_id,
            NotifyRecipient(
                message_id=n.notice_id,
                request_id=saga.request_id,
                notice_id=n.notice_id,
                recipient_id=n.recipient_id,
                request_type=saga.request_type,
                categories=n.categories,
                sealed_identifiers=_identifiers_for(seal, opened, n.recipient_id),
                must_acknowledge=n.must_acknowledge,
                acknowledge_by=n.acknowledge_by,
            ),
        )
        for n in planned
    ]


def _identifiers_for(seal: IdentifierSeal | None, opened: Identities | None, recipient_id: str) -> str | None:
    if seal is None or opened is None:
        return None
    chosen = installed().identifiers_for(recipient_id, opened)
    return seal.seal(chosen) if chosen else None
