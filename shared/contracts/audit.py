"""The per-request audit trail: a hash chain, so that an edited, removed or reordered entry is
detected by anyone holding a copy (`verify_chain`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from pydantic import AwareDatetime, Field

from shared.contracts.base import Frozen

GENESIS = "0" * 64


class AuditEntry(Frozen):
    request_id: str
    seq: int = Field(ge=1)
    at: AwareDatetime
    kind: str
    detail: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str

    @staticmethod
    def digest(
        request_id: str, seq: int, at: AwareDatetime, kind: str, detail: dict[str, Any], prev_hash: str
    ) -> str:
        body = json.dumps(
            {"request_id": request_id, "seq": seq, "at": at.isoformat(), "kind": kind, "detail": detail},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(f"{prev_hash}|{body}".encode()).hexdigest()

    def expected_hash(self) -> str:
        return self.digest(self.request_id, self.seq, self.at, self.kind, self.detail, self.prev_hash)


def verify_chain(entries: Sequence[AuditEntry]) -> int | None:
    """The seq of the first entry that breaks the chain, or None if it holds."""
    prev = GENESIS
    for expected_seq, entry in enumerate(entries, start=1):
        if entry.seq != expected_seq or entry.prev_hash != prev or entry.hash != entry.expected_hash():
            return entry.seq
        prev = entry.hash
    return None
