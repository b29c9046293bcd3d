"""Identity normalisation: the one place that decides when two identifiers are the same.

Stores keep identifiers as people typed them (`+44 (0)7700 900461`, `mailto:<Alice@Bücher.example>`).
Matching is done here, in Python, on the normalised forms; a store is only asked for
*candidates*, with a coarse key it can index (`PHONE_KEYS`, `EMAIL_KEYS`, `id_key_sql`)
that is equal for every spelling of the same identifier. The coarse key may let other rows
through; it must never keep a true match out, which `tests/integration/test_identity_keys.py`
checks against PostgreSQL over generated spellings. There is no second normalisation to drift.
"""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
# characters around an `@` up to a space or a mark no unquoted address holds.
_ADDRESS_TOKEN = re.compile(r"[^\s<>()\[\],;:]+@[^\s<>()\[\],;:]+")
# Full-width ASCII (U+FF01-U+FF5E) as ASCII.
_FULLWIDTH = {0xFF01 + n: 0x21 + n for n in range(94)}
# A comment after the address (RFC 5322): `alice@example.com (work)`, and the old form of a
# display name, `alice@example.com (Alice Hartley)`.
_COMMENT = re.compile(r"\([^()]*\)$")  # no space before it in the pattern: quadratic on spaces
PHONE_TAIL = 6  # digits of a number's end that every spelling of it shares (see phone_prefilter)

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
    text = _printable(raw, "an e-mail address").translate(_FULLWIDTH).strip().rstrip(";,").strip()
    text = _COMMENT.sub("", text).rstrip(";,").strip()  # also after a display form: EMAIL_KEYS
    text = _MAILTO.sub("", text)
    if match := _DISPLAY_FORM.search(text):
        named = text[: match.start()]
        text = match.group(1)
        # A name with another address in it is a list (`Alice <a@x>, Ben <b@x>`); the address
        # itself in it is how mail clients write it (`alice@x <alice@x>`, Exchange's `"Hartley,
        # Alice (alice@x)" <alice@x>`). Read as its last address, Ben's request had erased
        # Alice's account as certainly his.
        address = _MAILTO.sub("", text.strip()).strip().casefold()
        if any(a.strip("\"'").casefold() != address for a in _ADDRESS_TOKEN.findall(named)):
            raise ValueError("not an e-mail address: several addresses")
    text = _MAILTO.sub("", text.strip()).strip()
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
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_HYPHENS = "-" * len(_DASHES)
_TO_HYPHEN = str.maketrans(_DASHES, _HYPHENS)


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


def phone_prefilter(phone: str) -> str:
    """The coarse key of a normalised number: the last digits of its line (every spelling of
    the number, with or without an extension, ends with them once the extension is dropped)."""
    return line(phone)[-PHONE_TAIL:]


def email_prefilter(email: str) -> str:
    """The coarse key of a normalised address: the ASCII letters and digits of its mailbox
    name (no sub-address, no domain: `bücher.example` and its punycode differ)."""
    return re.sub(r"[^a-z0-9]", "", mailbox(email).rpartition("@")[0].lower())


# Python's \s is every Unicode space; PostgreSQL's is ASCII only under a C locale. An address
# stored with a no-break space before `mailto:` must still get its key (the review found one
# with a trailing "\r" surviving an erasure when SQL trimmed less than Python).
_SQL_BLANKS = r"\s\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\u0085\u001c-\u001f"
_SQL_INVISIBLE = r"\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"  # _INVISIBLE's
_SQL_SPACES = _SQL_BLANKS + _SQL_INVISIBLE
_SQL_SPACE = f"[{_SQL_SPACES}]"
_FULLWIDTH_DIGITS = "".join(chr(0xFF10 + n) for n in range(10))
# Every decimal digit Unicode has (Arabic-Indic, Devanagari, full-width, mathematical bold…), as
# libphonenumber reads them, and the ASCII digit each is: a number stored so had no key at all.
_DIGITS = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Nd"]
_UNICODE_DIGITS = "".join(_DIGITS)
_AS_ASCII = "".join(str(unicodedata.digit(c)) for c in _DIGITS)


# A field's e-mail keys, computed by PostgreSQL from the field as typed (a function named by a
# digest of its body, as PHONE_KEYS is): the key of the field read as one address
# (`email_prefilter_sql`: its last display form, else all of it), and the key of the name
# before each `@` in it, back to the space or mark before that name, so that every address of
# a list is found (`Alice <alice@x>, Ben <ben@x>`, `alice@x,ben@x`: only the first or the last
# had been), and one in a display form with a comment after it. The field is read first as
# `normalise_email` reads it: invisible marks dropped (a soft hyphen in a name had cut it),
# full-width characters as ASCII, composed (NFC, in a UTF-8 database): the key keeps ASCII
# letters only, and a decomposed `é` left an `e` that a composed one, as a request gives it,
# does not. The first and last 16 names of a field, each key at most 64 characters (a name
# has no more): a hostile field of thousands of `@` is not a write that takes seconds, nor a
# key past what an index row holds.
_SQL_FULLWIDTH = "".join(chr(c) for c in _FULLWIDTH).replace("'", "''")
_SQL_HALFWIDTH = "".join(chr(c) for c in _FULLWIDTH.values()).replace("'", "''")
_EMAIL_NAME_START = f'^.*[{_SQL_BLANKS}<>,;:()\\[\\]"]'
_EMAIL_KEYS_BODY = f"""DECLARE
    keys text[];
    parts text[];
    n integer;
    name text;
BEGIN
    IF field ~ '[^\x01-\x7f]' THEN
        field := translate(regexp_replace(field, '[{_SQL_INVISIBLE}]', '', 'g'),
            '{_SQL_FULLWIDTH}', '{_SQL_HALFWIDTH}');
        IF current_setting('server_encoding') = 'UTF8' THEN
            field := normalize(field, NFC);
        END IF;
    END IF;
    keys := ARRAY[left({{whole}}, 64)];
    parts := string_to_array(field, '@');
    n := coalesce(array_length(parts, 1), 1) - 1;
    FOR i IN 1 .. n
    LOOP
        CONTINUE WHEN i > 16 AND i <= n - 16;
        name := regexp_replace(rtrim(parts[i], '"'''), '{_EMAIL_NAME_START}', '');
        name := regexp_replace(lower(split_part(name, '+', 1)), '[^a-z0-9]', '', 'g');
        keys := array_append(keys, left(name, 64));
    END LOOP;
    RETURN keys;
END"""


# A field's phone keys, computed by PostgreSQL from the field as typed (a function of Lethe's in
# the store's database, named by a digest of its body, so that a changed body makes a new
# function and a new index, never an index left stale): the last digits before each place
# where a run of digits ends, across the runs before it (any decimal digit read as one).
# Every number written in the field ends where a run of digits ends, whatever stands between
# its digits, after it (an extension, a note) or between it and the next number (`, `, ` - `,
# `/`, a space, a new line), so the key of each is there: `020 7946 0000 - 07700 900461 /
# 07700 900462` has 460000, 900461 and 900462 (and the tails of its shorter runs, which no
# number's key equals but by chance). A row is a candidate by any of them; a value that is no
# one number cannot be read, and a person decides (shared/worker/matching.py). Linear in the
# field's length, the last digits kept as it goes.
_PHONE_KEYS_BODY = f"""DECLARE
    keys text[] := '{{}}';
    tail text := '';
    run text;
BEGIN
    IF field ~ '[^\x01-\x7f]' THEN  -- only then: the list of digits is long
        field := translate(field, '{_UNICODE_DIGITS}', '{_AS_ASCII}');
    END IF;
    FOREACH run IN ARRAY regexp_split_to_array(field, '[^0-9]+')
    LOOP
        CONTINUE WHEN run = '';
        tail := right(tail || run, {PHONE_TAIL});
        keys := array_append(keys, tail);
    END LOOP;
    RETURN keys;
END"""
PHONE_KEYS = f"lethe_phone_keys_{hashlib.sha256(_PHONE_KEYS_BODY.encode()).hexdigest()[:8]}"


# Made only where none of its name is (its name says its body): one an operator made beforehand
# under another role is not replaced, which only its owner may do. Anyone may run it: the
# store's own applications, whose writes to the table compute it for the index.
def _function_ddl(name: str, body: str) -> str:
    return f"""DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_proc
                    WHERE proname = '{name}' AND pronamespace = current_schema()::regnamespace) THEN
        CREATE FUNCTION {name}(field text) RETURNS text[]
            LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $lethe$ {body} $lethe$;
        GRANT EXECUTE ON FUNCTION {name}(text) TO PUBLIC;
    END IF;
END $do$"""


PHONE_KEYS_DDL = _function_ddl(PHONE_KEYS, _PHONE_KEYS_BODY)


def phone_match_sql(column: str, keys: str) -> str:
    """A column's field holds a number with one of these keys (`keys`: a parameter, text[])."""
    return f"{PHONE_KEYS}({column}) && {keys}"


def phone_key_index(name: str, table: str, column: str) -> tuple[str, ...]:
    """DDL of the function and the GIN index of a column's phone keys, replacing the indexes of
    earlier expressions: `name_<digest>` (a B-tree of the first number's key before issue 17's
    fourteenth part) and `name_tail_<digest>` (of the last number's)."""
    return (
        PHONE_KEYS_DDL,
        *_key_index(name, table, f"{PHONE_KEYS}({column})", gin=True),
        _drop_stale(f"{name}_tail", table, keep=""),
    )


def id_prefilter(customer_id: str) -> str:
    """The coarse key of a normalised customer id: in upper case, so that the store returns one
    written in another case (`c-1002`), which matching.py puts to a person (a system may tell
    `ab12` from `AB12`)."""
    return customer_id.upper()


def id_key_sql(column: str) -> str:
    """The key PostgreSQL computes from a customer id as stored: without the spaces and invisible
    characters `normalise_id` drops, its dashes hyphens, in upper case (`"c-1002 "` has
    C-1002's key; one the normalisation refuses becomes a candidate nobody matches, which is
    harmless)."""
    spaceless = f"regexp_replace({column}, '{_SQL_SPACE}', '', 'g')"
    return f"upper(translate({spaceless}, '{_DASHES}', '{_HYPHENS}'))"


def id_key_index(name: str, table: str, column: str) -> tuple[str, str, str]:
    """DDL of the index on a table's customer id key (replacing a plain index of that name)."""
    return _key_index(name, table, id_key_sql(column))


def _key_index(name: str, table: str, expression: str, gin: bool = False) -> tuple[str, str, str]:
    """The index, and the removal of any earlier one: the plain `name`, or `name_<digest>` of an
    expression (or kind of index) since changed (each is maintained on every write while it
    stands). `gin`: for an array, written to at once (GIN's pending list, its default, is read
    whole by every search until a vacuum empties it: on a store written to all day that was
    2.3 ms a search at 20,000 rows against 0.03; docs/performance.md, fourteenth part)."""
    kind = "gin (fastupdate = off) " if gin else ""
    digest = hashlib.sha256(f"{kind}{expression}".encode()).hexdigest()[:8]
    current = f"{name}_{digest}"
    method = f"USING gin (({expression})) WITH (fastupdate = off)" if gin else f"(({expression}))"
    return (
        f"CREATE INDEX IF NOT EXISTS {current} ON {table} {method}",
        f"DROP INDEX IF EXISTS {name}",
        _drop_stale(name, table, keep=current),
    )


def _drop_stale(name: str, table: str, keep: str) -> str:
    """DDL dropping the table's indexes named `name_<8 hex digits>` but `keep`."""
    return f"""DO $$ DECLARE stale text; BEGIN
    FOR stale IN SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()
        AND tablename = '{table}' AND indexname <> '{keep}'
        AND left(indexname, {len(name) + 1}) = '{name}_' AND length(indexname) = {len(name) + 9}
    LOOP EXECUTE format('DROP INDEX IF EXISTS %I', stale); END LOOP; END $$"""


def email_prefilter_sql(column: str) -> str:
    """The same key computed by PostgreSQL from the address as typed (of a field read as one
    address: EMAIL_KEYS has it among the keys of each address in the field)."""
    inner = rf"coalesce(substring({column} from '<([^<>]*)>[{_SQL_SPACES};,]*$'), {column})"
    bare = rf"regexp_replace({inner}, '^{_SQL_SPACE}*(mailto:)?{_SQL_SPACE}*', '', 'i')"
    local = rf"split_part(split_part({bare}, '@', 1), '+', 1)"
    return f"regexp_replace(lower({local}), '[^a-z0-9]', '', 'g')"


_EMAIL_BODY = _EMAIL_KEYS_BODY.replace("{whole}", email_prefilter_sql("field"))
EMAIL_KEYS = f"lethe_email_keys_{hashlib.sha256(_EMAIL_BODY.encode()).hexdigest()[:8]}"


def email_match_sql(column: str, keys: str) -> str:
    """A column's field holds an address with one of these keys (`keys`: a parameter, text[])."""
    return f"{EMAIL_KEYS}({column}) && {keys}"


def email_key_index(name: str, table: str, column: str) -> tuple[str, ...]:
    """DDL of the function and the GIN index of a column's e-mail keys, replacing the index of
    an earlier expression (a B-tree of the field's one key before issue 17's fifteenth part)."""
    return (
        _function_ddl(EMAIL_KEYS, _EMAIL_BODY),
        *_key_index(name, table, f"{EMAIL_KEYS}({column})", gin=True),
    )


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


def written_in(texts: Iterable[str], identities: Identities) -> bool:
    """Whether one of these texts, as a store holds them (unread: two numbers in one field, an
    address among others), has one of the identifiers written in it: a number's national digits
    among its digits (full-width ones read as digits), an address or a customer id among its
    characters, case and spaces aside (`C- 1002`, which the store's key found), or another
    spelling of an address's mailbox (`Ben <ben@x>, Alice <a.lice+news@gmail.com>`, as a hold
    on it or a search for it finds that alone). What only shares a store's coarse key with the
    subject's (the last digits of another number) has not."""
    digits = [line_digits for phone in identities.phones if len(line_digits := national_digits(phone)) >= 6]
    ids = [c.casefold() for c in identities.customer_ids]
    # An address alone, not the end of a longer one's name nor the start of a longer domain
    # (malice@, alice@gmail.com.evil.org).
    addresses = [
        re.compile(rf"(?<![\w.+%'-]){re.escape(e.casefold())}(?![\w-]|\.\w)") for e in identities.emails
    ]
    mailboxes = {mailbox(e) for e in identities.emails}
    for text in texts:
        folded = "".join(text.casefold().split())
        only_digits = "".join(str(unicodedata.digit(c)) for c in text if c.isdigit())
        if any(d in only_digits for d in digits) or any(c in folded for c in ids):
            return True
        if any(a.search(folded) for a in addresses):
            return True
        if mailboxes and any(
            _mailbox_of(a) in mailboxes for a in _ADDRESS_TOKEN.findall(text.translate(_FULLWIDTH))
        ):
            return True  # another spelling of the mailbox (a.lice@gmail.com, alice+news@)
    return False


def _mailbox_of(written: str) -> str | None:
    try:
        return mailbox(normalise_email(written))
    except ValueError:
        return None


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
