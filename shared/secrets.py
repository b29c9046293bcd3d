"""Key material that protects personal data must be key material: at least 32 random bytes,
never a placeholder copied from an example file. With a known pseudonym key any subject
reference is re-identified by guessing e-mails; with a known suppression key the suppression
list is a list of addresses."""

from __future__ import annotations

import base64
import binascii
import re

PLACEHOLDER = re.compile(r"change[-_ ]?me|example|placeholder", re.IGNORECASE)
MIN_BYTES = 32


def key_bytes(value: str) -> int:
    """How many bytes of key the value carries, read as hex or base64 (either alphabet); a
    value in neither counts by its characters (a passphrase is not a key: it needs more)."""
    text = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]+", text) and len(text) % 2 == 0:
        return len(text) // 2
    try:
        return len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        pass
    try:
        return len(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    except (binascii.Error, ValueError):
        return len(text) // 2


def check_key(value: str, name: str) -> str:
    """`value` unchanged, or ValueError naming the variable."""
    if PLACEHOLDER.search(value):
        raise ValueError(f"{name}: a placeholder, not a key: generate one (e.g. `openssl rand -hex 32`)")
    if key_bytes(value) < MIN_BYTES:
        raise ValueError(
            f"{name}: at least {MIN_BYTES} random bytes are needed (e.g. `openssl rand -hex 32`)"
        )
    return value
