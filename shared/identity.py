"""Identity normalisation: the one place that decides when two identifiers are the same person.

Workers match records with the normalised forms; stores keep identifiers as their users typed
them, so store adapters normalise the stored side too (see `E164_SQL`).
"""

from __future__ import annotations

import re
from typing import Annotated

import phonenumbers
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

DEFAULT_REGION = "GB"  # the source documents are a UK group's; numbers without +CC are British
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
_OPAQUE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def normalise_email(raw: str) -> str:
    """Trimmed and case-folded: mailbox providers compare local parts case-insensitively in
    practice, and a missed match here means data that survives an erasure."""
    email = raw.strip().lower()
    if not _EMAIL.match(email):
        raise ValueError("not an e-mail address")
    return email


def normalise_phone(raw: str, region: str = DEFAULT_REGION) -> str:
    """E.164 (+447700900123) from any of 07700 900123, +44 7700 900123, 0044 7700 900123."""
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("not a phone number") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone_variants(e164: str) -> list[str]:
    """Spellings a directory may hold for one number. LDAP's telephoneNumberMatch ignores
    spaces and hyphens but not a national trunk prefix, so a search must try each form."""
    parsed = phonenumbers.parse(e164, None)
    national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    return sorted({e164, "00" + e164[1:], national.replace(" ", "")})


def _opaque_id(raw: str) -> str:
    value = raw.strip()
    if not _OPAQUE_ID.match(value):
        raise ValueError("must be 1-128 characters of letters, digits and . _ : @ -")
    return value


Email = Annotated[str, AfterValidator(normalise_email)]
Phone = Annotated[str, AfterValidator(normalise_phone)]
OpaqueId = Annotated[str, AfterValidator(_opaque_id)]

MAX_IDENTIFIERS = 20


class Identities(BaseModel):
    """Who a request is about. Normalised on construction, so every comparison downstream is
    a plain equality."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    customer_ids: list[OpaqueId] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)
    emails: list[Email] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)
    phones: list[Phone] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)
    ldap_uids: list[OpaqueId] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)

    def canonical(self) -> str:
        """A stable text of the set of identifiers, order-independent, for pseudonymisation."""
        parts = [
            f"{kind}={value}"
            for kind in ("customer_ids", "emails", "phones", "ldap_uids")
            for value in sorted(set(getattr(self, kind)))
        ]
        return "\n".join(parts)


# Postgres mirror of normalise_phone for UK-style data: keeps digits and '+', turns 00 into +,
# and a national 0 into +44. Stores index this expression so matching stays an index lookup.
def e164_sql(column: str) -> str:
    plus = f"regexp_replace({column}, '[^0-9+]', '', 'g')"
    digits = f"regexp_replace({column}, '[^0-9]', '', 'g')"
    return (
        f"(CASE WHEN {plus} LIKE '+%' THEN {plus}"
        f" WHEN {digits} LIKE '00%' THEN '+' || substr({digits}, 3)"
        f" WHEN {digits} LIKE '0%' THEN '+44' || substr({digits}, 2)"
        f" ELSE '+' || {digits} END)"
    )
