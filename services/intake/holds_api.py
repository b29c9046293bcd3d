"""HTTP endpoints for Legal: place, release and list holds."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.intake import holds
from services.intake.auth import Role, guarded
from services.intake.models import ErrorBody, FreeText, SubjectIn
from shared.contracts.base import SystemName
from shared.contracts.holds import CaseReference
from shared.crypto import subject_ref

router = APIRouter(prefix="/v1/holds", tags=["holds"])


class PlaceHold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: SubjectIn
    systems: list[SystemName] | None = Field(None, min_length=1, max_length=32)
    categories: list[str] | None = Field(None, min_length=1, max_length=64)
    case_reference: CaseReference = Field(description="Opaque case id; cited in reports. No names.")
    reason: FreeText = Field(description="Kept in intake only; never sent on.")
    expires_at: AwareDatetime | None = None


class HoldView(BaseModel):
    id: UUID
    case_reference: str
    subject_ref: str
    systems: list[str] | None
    categories: list[str] | None
    placed_at: datetime
    expires_at: datetime | None
    released_at: datetime | None
    active: bool
    propagated: bool = Field(description="The hold's change is on the holds topic, so workers honour it.")


def _view(row: asyncpg.Record, propagated: bool = True) -> HoldView:
    now = datetime.now(UTC)
    active = row["released_at"] is None and (row["expires_at"] is None or row["expires_at"] > now)
    return HoldView(
        id=row["hold_id"],
        case_reference=row["case_reference"],
        subject_ref=row["subject_ref"],
        systems=row["systems"],
        categories=row["categories"],
        placed_at=row["placed_at"],
        expires_at=row["expires_at"],
        released_at=row["released_at"],
        active=active,
        propagated=propagated,
    )


@router.post(
    "",
    status_code=201,
    response_model=HoldView,
    responses={202: {"model": HoldView}, 422: {"model": ErrorBody}},
    **guarded(Role.LEGAL),
)
async def place_hold(body: PlaceHold, request: Request, response: Response) -> HoldView:
    """201 once every worker is bound to honour the hold; 202 if it is stored but could not be
    published yet (it will be, by the relay; workers honour it from then on)."""
    state = request.app.state
    unknown = sorted(set(body.systems or ()) - set(state.ctx.systems))
    if unknown:
        # Not repeated back (name the field, never the value): say which systems there are.
        raise HTTPException(422, f"systems: not among this deployment's ({', '.join(state.ctx.systems)})")
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise HTTPException(422, "expires_at: already past; a hold must protect something")
    categories = _categories(body, state.ctx.systems, state.ctx.categories)
    identities = body.subject.identities()
    row, outbox_id = await holds.place(
        state.ctx.pool,
        holds.NewHold(
            case_reference=body.case_reference,
            reason=body.reason,
            subject_ref=subject_ref(state.ctx.pseudonym_key, identities),
            sealed_identifiers=state.ctx.seal.seal(identities),
            systems=body.systems,
            categories=categories,
            placed_at=datetime.now(UTC),
            expires_at=body.expires_at,
        ),
    )
    propagated = await state.relay.wait_published(outbox_id)
    if not propagated:
        response.status_code = 202
    return _view(row, propagated)


def _categories(
    body: PlaceHold, deployed: list[str], known: Mapping[str, frozenset[str]]
) -> list[str] | None:
    """The hold's categories as workers compare them (exactly, with the policy's names): one
    that none of the hold's systems holds would be acknowledged and protect nothing."""
    if body.categories is None:
        return None
    systems = body.systems or deployed
    held = frozenset().union(*(known.get(s, frozenset()) for s in systems))
    names: list[str] = []
    for n, given in enumerate(body.categories):
        name = given.strip().lower()
        if name not in held:
            # The value is not repeated (it is free text); the names that would do are.
            raise HTTPException(
                422,
                f"categories[{n}]: not a category of {', '.join(systems)}; known: {', '.join(sorted(held))}",
            )
        if name not in names:
            names.append(name)
    return names


@router.delete(
    "/{hold_id}", response_model=HoldView, responses={404: {"model": ErrorBody}}, **guarded(Role.LEGAL)
)
async def release_hold(hold_id: UUID, request: Request) -> HoldView:
    """Release (recorded, never deleted). What the hold kept is then erased if no rule keeps it."""
    state = request.app.state
    row, outbox_id = await holds.release(state.ctx.pool, hold_id, datetime.now(UTC))
    if row is None:
        raise HTTPException(404, "hold_id: no such hold")
    propagated = outbox_id is None or await state.relay.wait_published(outbox_id)
    return _view(row, propagated)


@router.get("", response_model=list[HoldView], **guarded(Role.LEGAL, Role.COMPLIANCE))
async def list_holds(
    request: Request,
    active: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[HoldView]:
    """Newest first, `limit` at a time: page on with `offset`."""
    rows = await holds.listing(request.app.state.ctx.pool, active, datetime.now(UTC), limit, offset)
    return [_view(r) for r in rows]
