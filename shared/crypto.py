"""Keeping personal data out of Kafka.

Commands carry the subject's identifiers sealed with a key only Lethe's services hold, and a
pseudonymous subject reference (a keyed hash) that is safe to use as a message key, in span
attributes and in logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import ValidationError

from shared.identity import Identities, KnownIdentities

log = logging.getLogger(__name__)


class IdentifierSealError(ValueError):
    pass


class IdentifierSeal:
    """Seals with one key and opens with it or any of `extra` keys: a key is rotated by adding
    the new one everywhere as an extra key, then making it the sealing key, re-sealing what is
    stored (`rotate`, `lethe keys reseal`), and dropping the old one (README, Key rotation)."""

    def __init__(self, key: str, extra: Sequence[str] = ()) -> None:
        keys = [_fernet(key, "LETHE_IDENTIFIER_KEY")]
        keys += [_fernet(k, "LETHE_IDENTIFIER_EXTRA_KEYS") for k in extra]
        self._fernet = MultiFernet(keys)

    def rotate(self, token: str) -> str:
        """The same identifiers sealed with the sealing key (IdentifierSealError if no key opens it)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise IdentifierSealError("sealed_identifiers: cannot be opened with any key") from exc

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
        except ValueError as exc:
            raise IdentifierSealError("sealed_identifiers: not a valid identifier set") from exc
        try:
            if isinstance(data, dict) and "given" in data:
                return KnownIdentities.model_validate(data)
            return KnownIdentities(given=Identities.model_validate(data))
        except (ValidationError, ValueError) as exc:
            try:
                known = _as_sealed(data)
            except (ValidationError, ValueError):
                raise IdentifierSealError("sealed_identifiers: not a valid identifier set") from exc
            log.warning("identifiers an earlier version sealed no longer normalise; kept as sealed")
            return known


def _as_sealed(data: object) -> KnownIdentities:
    """Identifiers an earlier version normalised and sealed, which this one refuses (a field
    of several addresses, `alice@x,ben@x`, read then as one address): a hold on them must still
    open, or every erasure would wait for it (shared/worker/holds.py); each is kept as sealed."""
    if isinstance(data, dict) and "given" in data:
        extra = set(data) - {"given", "learnt"}
        if extra:
            raise ValueError(f"unexpected fields: {sorted(extra)}")
        return KnownIdentities.model_construct(
            given=Identities.as_sealed(data["given"]), learnt=Identities.as_sealed(data.get("learnt", {}))
        )
    return KnownIdentities.model_construct(given=Identities.as_sealed(data), learnt=Identities())


def _fernet(key: str, variable: str) -> Fernet:
    try:
        return Fernet(key.encode())
    except ValueError as exc:
        raise ValueError(f"{variable}: not a Fernet key (32 url-safe base64 bytes)") from exc


def subject_ref(pseudonym_key: str, identities: Identities) -> str:
    digest = hmac.new(pseudonym_key.encode(), identities.canonical().encode(), hashlib.sha256)
    return "subj_" + digest.hexdigest()[:32]


def new_identifier_key() -> str:
    return Fernet.generate_key().decode()
