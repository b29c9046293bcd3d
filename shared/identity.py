"""Identity normalisation: the one place that decides when two identifiers are the same.

Stores keep identifiers as people typed them (`+44 (0)7700 900461`, `mailto:<Alice@Bücher.example>`).
Matching is done here, in Python, on the normalised forms; a store is only asked for
*candidates*, by coarse keys it can index (shared/keys.py). There is no second normalisation
to drift.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import idna
import phonenumbers
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

DEFAULT_REGION = "GB"  # the source documents are a UK group's; numbers without +CC are British
_OPAQUE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_DISPLAY_FORM = re.compile(r"<([^<>]*)>\s*$")  # "Alice Hartley <alice@example.com>"
# A quoted local part that needs no quoting ("alice.hartley"@…) is that mailbox (RFC 5321).
_QUOTED_ATOM = re.compile(r'^"([A-Za-z0-9!#$%&\'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&\'*+/=?^_`{|}~-]+)*)"$')
_MAILTO = re.compile(r"^\s*mailto:", re.IGNORECASE)
# What a local part cannot hold unquoted (RFC 5322 specials): where one shows, the field is a
# list of addresses or not an address.
_SPECIALS = re.compile(r'[@,;:<>()\[\]\\"]')
# What reads as an address in a text that holds several (a display name, a list): the run of
# characters around an `@` up to a space or a mark that separates addresses in a list.
_ADDRESS_TOKEN = re.compile(r"[^\s<>()\[\],;:/|]+@[^\s<>()\[\],;:/|]+")
# Full-width ASCII (U+FF01-U+FF5E) as ASCII.
FULLWIDTH = {0xFF01 + n: 0x21 + n for n in range(94)}
# A comment after the address (RFC 5322): `alice@example.com (work)`, and the old form of a
# display name, `alice@example.com (Alice Hartley)`.
_COMMENT = re.compile(r"\([^()]*\)$")  # no space before it in the pattern: quadratic on spaces

Kind = Literal["customer_ids", "emails", "phones", "ldap_uids"]
KINDS: tuple[Kind, ...] = ("customer_ids", "emails", "phones", "ldap_uids")
# Customer ids, e-mail addresses and directory uids belong to one person in practice; phone
# numbers are shared (a household's landline, a switchboard, a family mobile).
STRONG: tuple[Kind, ...] = ("customer_ids", "emails", "ldap_uids")


# Invisible formatting characters that come with identifiers copied from documents, mail
# clients and spreadsheets (a zero-width space, a byte-order mark, direction marks around a
# number, a soft hyphen): not part of what was written, so dropped rather than refused. A
# record whose address carried one was otherwise unreadable, hence unmatched and not erased.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def _printable(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not text at all
        raise ValueError(f"not {what}: invalid characters") from None
    text = _INVISIBLE.sub("", text)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") and not c.isspace() for c in text):
        raise ValueError(f"not {what}: control or unassigned characters")
    return text


def normalise_email(raw: str) -> str:
    """`local@domain` as a mailbox provider compares it: surrounding whitespace, `mailto:`, a
    list separator or a comment after it and a display form's angle brackets dropped, quotes
    around a local part that needs none; full-width characters as ASCII; the local part NFC
    and lower-cased (providers compare it case-insensitively in practice, and a missed match is
    data that survives an erasure); the domain in its ASCII (punycode) form, so `bücher.example` and
    `xn--bcher-kva.example` are one domain. Sub-addresses (`alice+news@`) are kept: whether they
    are the same mailbox is for a person to decide (`mailbox`)."""
    # A list separator after it, as mail clients copy an address (`alice@example.com;`).
    text = _printable(raw, "an e-mail address").translate(FULLWIDTH).strip().rstrip(";,").strip()
    text = _COMMENT.sub("", text).rstrip(";,").strip()  # also after a display form: EMAIL_KEYS
    text = _MAILTO.sub("", text)
    named = ""
    if match := _DISPLAY_FORM.search(text):
        named, text = text[: match.start()], match.group(1)
    text = _MAILTO.sub("", text.strip()).strip()
    # A name with another address in it is a list (`Alice <a@x>, Ben <b@x>`); the address itself
    # in it is how mail clients write it (`alice@x <alice@x>`, Exchange's `"Hartley, Alice
    # (alice@x)" <alice@x>`). Read as its last address, Ben's request had erased Alice's
    # account as certainly his.
    if any(a.strip("\"'").casefold() != text.casefold() for a in _ADDRESS_TOKEN.findall(named)):
        raise ValueError("not an e-mail address: several addresses")
    local, at, domain = text.rpartition("@")
    if quoted := _QUOTED_ATOM.match(local):
        local = quoted.group(1)
    # Lower-cased (full-width letters are ASCII already: `\uff21lice`, as an East Asian input
    # method types it, is alice; not every compatibility form: `bob\u00b2` is not bob2's), and
    # before its length is checked: some letters grow (İ is two characters lower), and a value
    # must normalise to what normalises again to itself (it is sealed, then validated again
    # where it is opened).
    local = unicodedata.normalize("NFC", unicodedata.normalize("NFC", local).lower())
    if not quoted and _SPECIALS.search(local):  # `alice@x,ben` of `alice@x,ben@y`: a list
        raise ValueError("not an e-mail address: several addresses or unquoted specials")
    if not at or not local or not domain or len(local) > 64 or any(c.isspace() for c in text):
        raise ValueError("not an e-mail address")
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError:
        raise ValueError("not an e-mail address: invalid domain") from None
    if "." not in ascii_domain or len(ascii_domain) > 253:
        raise ValueError("not an e-mail address: invalid domain")
    return f"{local}@{ascii_domain.lower()}"


# Providers known to deliver to one mailbox whatever dots its name is written with, under
# either domain: `a.lice@googlemail.com` is `alice@gmail.com`'s mailbox.
_DOTLESS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox(email: str) -> str:
    """A normalised address's mailbox: without its sub-address (`alice+news@x.org` ->
    `alice@x.org`), and as the provider reads it where it ignores dots (`a.lice@gmail.com` ->
    `alice@gmail.com`). Whether another spelling of the mailbox is the subject's, a person
    decides (matching.py): a shared family mailbox is written many ways."""
    local, _, domain = email.rpartition("@")
    local = local.split("+", 1)[0]
    if domain in _DOTLESS:
        local, domain = local.replace(".", ""), _DOTLESS[domain]
    return f"{local}@{domain}"


def normalise_phone(raw: str, region: str = DEFAULT_REGION) -> str:
    """E.164 (+447700900123) from any of 07700 900123, +44 (0)7700 900123, 0044 7700 900123,
    tel:+44-7700-900123; with its extension as RFC 3966 writes it (`020 7946 0000 x12`,
    `ext. 12`, `#12`, `;ext=12` are +442079460000;ext=12). An extension is a line of its own:
    a switchboard's extensions are different people, and its main number is all of them
    (`line`, and matching.py, which puts a number with and without an extension to a person)."""
    text = _printable(raw, "a phone number").strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    try:
        parsed = _possible_number(text, region)
    except ValueError:
        # A note after it (`07700 900461 (mobile)`, `… - home`): libphonenumber reads its
        # letters as a keypad's digits. Without the note, the number; or still not one.
        bare = _without_note(text)
        if bare == text:
            raise
        parsed = _possible_number(bare, region)
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    # Its digits as digits (full-width ones too), written as typed otherwise (`x012` stays:
    # whether it is x12's line, a person decides: matching.py).
    ext = phonenumbers.normalize_digits_only(parsed.extension or "")
    return f"{e164}{_EXTENSION}{ext}" if ext else e164


_EXTENSION = ";ext="
# Words after a number's last digit, bracketed or not, with no digit in them: a label. Tried
# only on what follows the last digit, and only on a short one: on a whole text, its runs of
# spaces made the pattern cubic (a 3 KB number held intake's event loop for 24 s).
_NOTE = re.compile(r"[\s,;:/.\-]*[(\[]?[^\d()\[\]]*[)\]]?\s*")
_NOTE_MAX = 40


def _without_note(text: str) -> str:
    last = next((n for n in range(len(text) - 1, -1, -1) if text[n].isdigit()), -1)
    tail = text[last + 1 :]
    if last < 0 or not tail or len(tail) > _NOTE_MAX or not _NOTE.fullmatch(tail):
        return text
    return text[: last + 1]


def _possible_number(text: str, region: str) -> phonenumbers.PhoneNumber:
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("not a phone number") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("not a possible phone number")
    return parsed


def line(phone: str) -> str:
    """A normalised number without its extension: the switchboard it is on."""
    return phone.partition(_EXTENSION)[0]


def extension(phone: str) -> str:
    """A normalised number's extension ("" if none)."""
    return phone.partition(_EXTENSION)[2]


# Dashes a word processor or spreadsheet puts for a typed hyphen (a non-breaking hyphen, an en
# dash, a minus sign, a full-width hyphen): a hyphen.
DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_TO_HYPHEN = str.maketrans(DASHES, "-" * len(DASHES))


def normalise_id(raw: str) -> str:
    value = _printable(raw, "an id").strip().translate(_TO_HYPHEN)
    if not _OPAQUE_ID.match(value):
        raise ValueError("must be 1-128 characters of letters, digits and . _ : @ -")
    return value


def normalise_uid(raw: str) -> str:
    """A directory uid: compared without regard to case, as LDAP's uid attribute is (a search
    for `jsmith` returns the entry `JSmith`, which must then match it)."""
    return normalise_id(raw).lower()


NORMALISE = {
    "customer_ids": normalise_id,
    "emails": normalise_email,
    "phones": normalise_phone,
    "ldap_uids": normalise_uid,
}


def mask(kind: str, value: str) -> str:
    """Enough of an identifier for a reviewer to tell it from another, not enough to use it:
    +447700••••61, a•••••••y@example.co.uk, C-••02."""
    if kind == "emails":
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}{'•' * max(len(local) - 2, 1)}{local[-1:] if len(local) > 1 else ''}@{domain}"
    head, tail = (7 if kind == "phones" else 2), 2
    if len(value) <= head + tail:
        return value[:1] + "•" * (len(value) - 1)
    return value[:head] + "•" * (len(value) - head - tail) + value[-tail:]


def addresses_in(text: str) -> list[str]:
    """The addresses that can be read in a text that holds several (a list, display forms), each
    normalised: the runs of characters around an `@` up to a space or a list's mark."""
    found = []
    for token in _ADDRESS_TOKEN.findall(text.translate(FULLWIDTH)):
        with contextlib.suppress(ValueError):
            found.append(normalise_email(token))
    return found


@dataclass(frozen=True)
class Written:
    """Texts as a store holds them (unread: two numbers in one field, an address among others),
    read once for whichever identifiers are asked of them (a record's texts for each hold)."""

    folded: tuple[str, ...]  # case and spaces aside
    digits: tuple[str, ...]  # each text's digits, full-width ones read as digits
    mailboxes: frozenset[str]  # of the addresses that can be read in them

    @classmethod
    def of(cls, texts: Iterable[str]) -> Written:
        texts = tuple(texts)
        return cls(
            tuple("".join(t.casefold().split()) for t in texts),
            tuple("".join(str(unicodedata.digit(c)) for c in t if c.isdigit()) for t in texts),
            frozenset(mailbox(a) for t in texts for a in addresses_in(t)),
        )

    def names(self, identities: Identities) -> bool:
        """Whether one of the identifiers is written in them: a number's national digits among a
        text's digits, an address or a customer id among its characters (`C- 1002`, which the
        store's key found), or another spelling of an address's mailbox (`Ben <ben@x>, Alice
        <a.lice+news@gmail.com>`, as a hold on it or a search for it finds that alone). What only
        shares a store's coarse key with it (the last digits of another number) is not."""
        numbers = [n for phone in identities.phones if len(n := national_digits(phone)) >= 6]
        if any(n in digits for n in numbers for digits in self.digits):
            return True
        ids = [c.casefold() for c in identities.customer_ids]
        if any(c in folded for c in ids for folded in self.folded):
            return True
        # An address alone, not the end of a longer one's name nor the start of a longer domain
        # (malice@, alice@gmail.com.evil.org).
        addresses = [
            re.compile(rf"(?<![\w.+%'-]){re.escape(e.casefold())}(?![\w-]|\.\w)") for e in identities.emails
        ]
        if any(a.search(folded) for a in addresses for folded in self.folded):
            return True
        return any(mailbox(e) in self.mailboxes for e in identities.emails)


def written_in(texts: Iterable[str], identities: Identities) -> bool:
    """Whether one of the identifiers is written in one of these texts (`Written.names`)."""
    return Written.of(texts).names(identities)


def national_digits(phone: str) -> str:
    """The digits of a number's line without its country code or trunk prefix (7700900461 for
    +447700900461): every spelling of the line holds them, in order, whatever stands between."""
    return phonenumbers.national_significant_number(phonenumbers.parse(line(phone), None))


Email = Annotated[str, AfterValidator(normalise_email)]
Phone = Annotated[str, AfterValidator(normalise_phone)]
OpaqueId = Annotated[str, AfterValidator(normalise_id)]
Uid = Annotated[str, AfterValidator(normalise_uid)]

MAX_IDENTIFIERS = 20


class Identities(BaseModel):
    """Who a request is about. Normalised on construction, so every comparison downstream is
    a plain equality."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    customer_ids: list[OpaqueId] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)
    emails: list[Email] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)
    phones: list[Phone] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)
    ldap_uids: list[Uid] = Field(default_factory=list, max_length=MAX_IDENTIFIERS)

    @classmethod
    def lenient(cls, **raw: Sequence[str | None]) -> Identities:
        """From identifiers as a store holds them: what does not normalise is left out (a
        malformed phone on a record cannot match anyone)."""
        return cls.read(**raw)[0]

    @classmethod
    def read(cls, **raw: Sequence[str | None]) -> tuple[Identities, tuple[Kind, ...]]:
        """As `lenient`, and the kinds of which a value was there but did not normalise: a
        record whose e-mail cannot be read may still be someone else's (matching.py)."""
        kept: dict[str, list[str]] = {}
        unreadable: list[Kind] = []
        for kind, values in raw.items():
            for value in values:
                if value and value.strip():
                    try:
                        normalised = NORMALISE[kind](value)
                    except ValueError:
                        unreadable.append(kind)  # type: ignore[arg-type]
                        continue
                    kept.setdefault(kind, []).append(normalised)
        # Normalised above: not again by the validators.
        return cls.normalised(kept), tuple(k for k in KINDS if k in unreadable)

    @classmethod
    def as_sealed(cls, data: object) -> Identities:
        """Identifiers as an earlier version sealed them: each normalised as now, or kept as
        it was sealed (that version's normal form) where it no longer normalises."""
        if not isinstance(data, dict) or set(data) - set(KINDS):
            raise ValueError("not an identifier set")
        kept: dict[str, list[str]] = {}
        for kind, values in data.items():
            if not isinstance(values, list) or len(values) > MAX_IDENTIFIERS:
                raise ValueError(f"{kind}: not a list of at most {MAX_IDENTIFIERS}")
            for value in values:
                if not isinstance(value, str):
                    raise ValueError(f"{kind}: not text")
                try:
                    kept.setdefault(kind, []).append(NORMALISE[kind](value))
                except ValueError:
                    kept.setdefault(kind, []).append(_printable(value, kind))
        return cls.normalised(kept)

    def pairs(self) -> Iterator[tuple[Kind, str]]:
        for kind in KINDS:
            for value in getattr(self, kind):
                yield kind, value

    @classmethod
    def normalised(cls, values: Mapping[str, Iterable[str]]) -> Identities:
        """From identifiers already normalised, without validation: set operations use it (a
        union can outgrow what one request may name; the tracker bounds what it searches with)."""

        def kind(name: str) -> list[str]:
            return sorted(set(values.get(name, ())))

        return cls.model_construct(
            customer_ids=kind("customer_ids"),
            emails=kind("emails"),
            phones=kind("phones"),
            ldap_uids=kind("ldap_uids"),
        )

    def union(self, *others: Identities) -> Identities:
        return Identities.normalised(
            {k: set(getattr(self, k)).union(*(getattr(o, k) for o in others)) for k in KINDS}
        )

    def minus(self, other: Identities) -> Identities:
        return Identities.normalised({k: set(getattr(self, k)) - set(getattr(other, k)) for k in KINDS})

    def intersection(self, other: Identities) -> Identities:
        return Identities.normalised({k: set(getattr(self, k)) & set(getattr(other, k)) for k in KINDS})

    def strong(self) -> Identities:
        return Identities.normalised({k: getattr(self, k) for k in STRONG})

    def count(self) -> int:
        return sum(len(getattr(self, k)) for k in KINDS)

    def __bool__(self) -> bool:
        return self.count() > 0

    def canonical(self) -> str:
        """A stable text of the set of identifiers, order-independent, for pseudonymisation."""
        parts = [
            f"{kind}={value}"
            for kind in ("customer_ids", "emails", "phones", "ldap_uids")
            for value in sorted(set(getattr(self, kind)))
        ]
        return "\n".join(parts)


class KnownIdentities(BaseModel):
    """What a command may search with: the identifiers the request gave, and those learnt from
    the subject's own records in earlier rounds (identity expansion)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    given: Identities
    learnt: Identities = Field(default_factory=Identities)

    @property
    def all(self) -> Identities:
        return self.given.union(self.learnt)
