"""JSON codec for the wire contracts.

Decoding never lets a validation error escape as a bare exception: a bad message becomes a
`PoisonMessage` naming the field, which consumers send to the dead-letter topic and move on.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.contracts.base import SCHEMA_VERSION

T = TypeVar("T")


class PoisonMessage(ValueError):
    """A message that can never be processed, whatever the retries."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


def describe_validation_error(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "(message)"
    return field, first["msg"]


def decode(raw: bytes | None, target: type[T] | TypeAdapter[T]) -> T:
    if raw is None:
        raise PoisonMessage("(value)", "empty message")
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage("(value)", f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise PoisonMessage("(value)", "not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        # Only a number is quoted: the error travels in clear (logs, a dead letter's header).
        shown = version if isinstance(version, int) else "(not a number)"
        raise PoisonMessage("schema_version", f"unsupported version {shown}")
    adapter = target if isinstance(target, TypeAdapter) else TypeAdapter(target)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise PoisonMessage(*describe_validation_error(exc)) from None
