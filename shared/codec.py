"""JSON codec for the wire contracts.

Decoding never lets a validation error escape as a bare exception: a bad message becomes a
`PoisonMessage` naming the field, which consumers send to the dead-letter topic and move on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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


def describe_error(loc: Sequence[int | str], kind: str, message: str, given: Any) -> tuple[str, str]:
    """The field and the problem, repeating nothing the sender wrote: an unknown key is named by
    where it was found (the key itself may be an e-mail address), and a message that quotes the
    value is replaced (the value may be personal data)."""
    if kind == "extra_forbidden":
        return ".".join(str(p) for p in loc[:-1]) or "(message)", "unknown field (its name is not repeated)"
    if isinstance(given, str) and len(given) >= 3 and given in message:  # shorter says nothing
        message = "invalid value (not repeated)"
    return ".".join(str(part) for part in loc) or "(message)", message


def describe_validation_error(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors(include_url=False)[0]
    return describe_error(first["loc"], first["type"], first["msg"], first.get("input"))


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(target: type[T]) -> TypeAdapter[T]:
    """Built once per type: building one each message cost a seventh of a decode. For model
    classes: a union or an annotated type built on the spot compares unequal to the next one
    built alike, so callers pass those as a TypeAdapter of their own (SUBJECT_COMMAND)."""
    adapter = _ADAPTERS.get(target)
    if adapter is None:
        adapter = _ADAPTERS[target] = TypeAdapter(target)
    return adapter


def decode(raw: bytes | None, target: type[T] | TypeAdapter[T]) -> T:
    if raw is None:
        raise PoisonMessage("(value)", "empty message")
    adapter = target if isinstance(target, TypeAdapter) else _adapter(target)
    try:
        # Parsed and validated in one pass (pydantic's own parser): half the cost of json.loads
        # then validation. Taken only if the message states its schema_version (every contract
        # pins it to 1, but a default would stand in for a missing one); anything else goes
        # through the checks below, for their error.
        message = adapter.validate_json(raw)
        if isinstance(message, BaseModel) and "schema_version" in message.model_fields_set:
            return message
    except ValidationError:
        pass
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and an integer past Python's digit limit;
        # RecursionError a few kilobytes of nested brackets. Any of them, not caught, stopped
        # the consumer on the same record after every restart.
        raise PoisonMessage("(value)", f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise PoisonMessage("(value)", "not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        # Only a number is quoted: the error travels in clear (logs, a dead letter's header).
        shown = version if isinstance(version, int) else "(not a number)"
        raise PoisonMessage("schema_version", f"unsupported version {shown}")
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise PoisonMessage(*describe_validation_error(exc)) from None
