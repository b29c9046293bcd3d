"""Keeping personal data out of Kafka.

Commands carry the subject's identifiers sealed with a key only Lethe's services hold, and a
pseudonymous subject reference (a keyed hash) that is safe to use as a message key, in span
attributes and in logs.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken
from pydantic import ValidationError

from shared.identity import Identities


class IdentifierSealError(ValueError):
    pass


class IdentifierSeal:
    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode())
        except ValueError as exc:
            raise ValueError("LETHE_IDENTIFIER_KEY: not a Fernet key (32 url-safe base64 bytes)") from exc

    def seal(self, identities: Identities) -> str:
        return self._fernet.encrypt(identities.model_dump_json().encode()).decode()

    def open(self, token: str) -> Identities:
        try:
            plain = self._fernet.decrypt(token.encode())
        except InvalidToken as exc:
            raise IdentifierSealError("sealed_identifiers: cannot be opened with this key") from exc
        try:
            return Identities.model_validate_json(plain)
        except ValidationError as exc:
            raise IdentifierSealError("sealed_identifiers: not a valid identifier set") from exc


def subject_ref(pseudonym_key: str, identities: Identities) -> str:
    digest = hmac.new(pseudonym_key.encode(), identities.canonical().encode(), hashlib.sha256)
    return "subj_" + digest.hexdigest()[:32]


def new_identifier_key() -> str:
    return Fernet.generate_key().decode()
