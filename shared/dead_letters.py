"""What a dead letter carries: never the failed message in clear.

A message fails for reasons nobody foresaw, on any topic: an ingress body (e-mails and phone
numbers in clear), or bytes that are not what the topic should hold. So the key and value of
every dead letter are sealed together with the identifier key, as identifiers are in commands;
`lethe dlq replay` opens them to send the message back. What an engineer needs to look at it
without the key travels in clear headers: where it came from, the error, and its ids (read
from the body, and copied only if they have an id's opaque alphabet: no '@', no spaces)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable

from shared.contracts.base import REQUEST_ID_PATTERN
from shared.crypto import IdentifierSeal, IdentifierSealError

Headers = list[tuple[str, bytes]]
SEALED = "lethe-sealed"  # the value is a sealed envelope of the original key and value
REQUEST_ID = "lethe-request-id"
MESSAGE_ID = "lethe-message-id"
REPLAYED_FROM = "lethe-replayed-from"  # partition:offset of the dead letter a message was sent back from
BODY_DROPPED = "lethe-body-dropped"  # the failed key and value's size in bytes, where too large to keep
# A failed key and value larger than this are not kept in their letter (their size is):
# sealed, a letter is 1.8 times them, and one past the producer's request limit (1 MiB) could
# never be sent, which held its consumer up for good. Lethe's own messages are a few kilobytes.
BODY_KEPT_MAX = 512 * 1024
_ID_IN_PREFIX = {
    field: re.compile(rf'"{field}"\s*:\s*"([^"\\]{{1,200}})"'.encode())
    for field in ("request_id", "message_id")
}
ID_HEADERS = {"request_id": REQUEST_ID, "message_id": MESSAGE_ID}
ENVELOPE_VERSION = b"1"
# What a request id may look like (ingress validates it so); a message id is a UUID.
_AN_ID = re.compile(REQUEST_ID_PATTERN)


def seal_letter(seal: IdentifierSeal, key: bytes | None, value: bytes | None) -> bytes:
    envelope = {
        "key": None if key is None else base64.b64encode(key).decode(),
        "value": None if value is None else base64.b64encode(value).decode(),
    }
    return seal.seal_text(json.dumps(envelope)).encode()


def open_letter(seal: IdentifierSeal, body: bytes | None) -> tuple[bytes | None, bytes | None]:
    """The original (key, value). IdentifierSealError if no key given opens it (sealed with a
    key since dropped) or it is not an envelope."""
    plain = seal.open_text((body or b"").decode(errors="replace"))
    try:
        data = json.loads(plain)
        return _unpack(data["key"]), _unpack(data["value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IdentifierSealError("dead letter: not a sealed envelope") from exc


def _unpack(field: str | None) -> bytes | None:
    return None if field is None else base64.b64decode(field, validate=True)


def is_sealed(headers: Iterable[tuple[str, bytes]] | None) -> bool:
    return dict(headers or ()).get(SEALED) == ENVELOPE_VERSION


def id_headers(value: bytes | None) -> Headers:
    """request_id and message_id of a JSON body, as headers: none from a body that is not JSON,
    and none that is not shaped like an id (a failed submission's may be an e-mail)."""
    if value is not None and len(value) > BODY_KEPT_MAX:  # not parsed whole: its first kilobytes
        return _ids_in_prefix(value)
    try:
        body = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):  # [[[[… : deeper than the parser goes
        return _ids_in_prefix(value or b"")  # not JSON throughout, its ids may still be readable
    if not isinstance(body, dict):
        return []
    ids = {header: str(body.get(field)) for field, header in ID_HEADERS.items() if field in body}
    return [(header, v.encode()) for header, v in ids.items() if _AN_ID.fullmatch(v)]


def _ids_in_prefix(value: bytes) -> Headers:
    """The ids as a JSON body's first kilobytes write them, where the whole cannot be parsed."""
    found = {
        f: m.group(1).decode(errors="replace")
        for f, r in _ID_IN_PREFIX.items()
        if (m := r.search(value[:4096]))
    }
    return [(ID_HEADERS[f], v.encode()) for f, v in found.items() if _AN_ID.fullmatch(v)]
