"""Keeping personal data out of Kafka.

Commands carry the subject's identifiers sealed with a key only Lethe's services hold, and a
pseudonymous subject reference (a keyed hash) that is safe to use as a message key, in span
attributes and in logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from cryptography.fernet import Fernet, InvalidToken
from pydantic import ValidationError

from shared.identity import Identities, KnownIdentities


class IdentifierSealError(ValueError):
    pass


class IdentifierSeal:
    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode())
        except ValueError as exc:
            raise ValueError("LETHE_IDENTIFIER_KEY: not a Fernet key (32 url-safe base64 bytes)") from exc

    def seal(self, identities: Identities | KnownIdentities) -> str:
        return self.seal_text(identities.model_dump_json())

    def seal_text(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def open_text(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise IdentifierSealError("sealed_identifiers: cannot be opened with this key") from exc

    def open(self, token: str) -> Identities:
        return self.open_known(token).all

    def open_known(self, token: str) -> KnownIdentities:
        """A command's identifiers: what the request gave and what was learnt since (a bare
        identifier set, as holds and older commands carry, is all given)."""
        plain = self.open_text(token)
        try:
            data = json.loads(plain)
            if isinstance(data, dict) and "given" in data:
                return KnownIdentities.model_validate(data)
            return KnownIdentities(given=Identities.model_validate(data))
        except (ValidationError, ValueError) as exc:
            raise IdentifierSealError("sealed_identifiers: not a valid identifier set") from exc


def subject_ref(pseudonym_key: str, identities: Identities) -> str:
    digest = hmac.new(pseudonym_key.encode(), identities.canonical().encode(), hashlib.sha256)
    return "subj_" + digest.hexdigest()[:32]


def new_identifier_key() -> str:
    return Fernet.generate_key().decode()
