"""The idempotency fingerprint of a submission, keyed so that the stored value confirms nothing.

A plain hash of the body stays in the table after the sealed identifiers are dropped: with it,
anyone who reads the table can confirm a guessed e-mail for a request id by hashing guesses.
Keyed with an HMAC, a guess can only be tested by whoever holds the key.

The key is derived (HKDF-SHA256, its own label) from LETHE_PSEUDONYM_KEY rather than read from a
new variable: whoever holds the pseudonym key can already test a guess against the same row's
`subject_ref` (an HMAC of the identifiers under that key), so a separate key would protect
nothing more, and a new required secret would be one more to provision, rotate and lose. The
label keeps the two uses apart: a fingerprint is never a subject reference, nor comparable to one.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.intake.models import SubmitRequest

LABEL = b"lethe/intake/request-fingerprint/v1"
# Marks a keyed fingerprint; one without it is an unkeyed SHA-256 stored by an earlier version.
PREFIX = "k1:"


class Fingerprints:
    def __init__(self, pseudonym_key: str) -> None:
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=LABEL).derive(
            pseudonym_key.encode()
        )

    def of(self, body: SubmitRequest) -> str:
        """The same body gives the same fingerprint, whatever the key order or the spelling of
        an identifier (the model normalises them)."""
        return self.keyed(body.digest())

    def candidates(self, body: SubmitRequest) -> tuple[str, ...]:
        """What a stored fingerprint of the same body may be: this version's, or (for a request
        stored before) that of the body as it was written."""
        return self.of(body), self.keyed(body.legacy_digest())

    def keyed(self, digest: str) -> str:
        """The keyed form of a body's digest. An HMAC over the digest rather than the body, so
        that a fingerprint stored unkeyed (which is that digest) can be keyed in place."""
        return PREFIX + hmac.new(self._key, digest.encode(), hashlib.sha256).hexdigest()

    def rekeyed(self, stored: str) -> str:
        """`stored` in keyed form: unchanged if it already is."""
        return stored if is_keyed(stored) else self.keyed(stored)

    def same(self, stored: str, fingerprint: str) -> bool:
        """Whether a stored fingerprint (keyed, or not yet) is that of the same body."""
        return hmac.compare_digest(self.rekeyed(stored), fingerprint)


def is_keyed(stored: str) -> bool:
    return stored.startswith(PREFIX)
