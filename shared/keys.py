"""The stores' coarse keys: what a store is searched by, computed in Python from a normalised
identifier (`email_prefilter`, `phone_prefilter`, `id_prefilter`) and by PostgreSQL from a field
as people typed it (`EMAIL_KEYS`, `PHONE_KEYS`, `id_key_sql`), with the indexes on them. A key
is equal for every spelling of the same identifier: it may let other rows through, which the
normalisation (shared/identity.py) then tells apart, but it must never keep a true match out,
which `tests/integration/test_identity_keys.py` checks against PostgreSQL over generated
spellings."""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata

from shared.identity import DASHES, FULLWIDTH, line, mailbox

PHONE_TAIL = 6  # digits of a number's end that every spelling of it shares (see phone_prefilter)
_HYPHENS = "-" * len(DASHES)


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
# Every decimal digit Unicode has (Arabic-Indic, Devanagari, full-width, mathematical bold…), as
# libphonenumber reads them, and the ASCII digit each is: a number stored so had no key at all.
_DIGITS = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Nd"]
_UNICODE_DIGITS = "".join(_DIGITS)
_AS_ASCII = "".join(str(unicodedata.digit(c)) for c in _DIGITS)


def email_prefilter_sql(column: str) -> str:
    """The same key computed by PostgreSQL from the address as typed (of a field read as one
    address: EMAIL_KEYS has it among the keys of each address in the field)."""
    inner = rf"coalesce(substring({column} from '<([^<>]*)>[{_SQL_SPACES};,]*$'), {column})"
    bare = rf"regexp_replace({inner}, '^{_SQL_SPACE}*(mailto:)?{_SQL_SPACE}*', '', 'i')"
    local = rf"split_part(split_part({bare}, '@', 1), '+', 1)"
    return f"regexp_replace(lower({local}), '[^a-z0-9]', '', 'g')"


# A field's e-mail keys, computed by PostgreSQL from the field as typed (a function named by a
# digest of its body, as PHONE_KEYS is): the key of the field read as one address
# (`email_prefilter_sql`: its last display form, else all of it), and the key of the name
# before each `@` in it, back to the space or mark before that name, so that every address of
# a list is found (`Alice <alice@x>, Ben <ben@x>`, `alice@x,ben@x`: only the first or the last
# had been), and one in a display form with a comment after it; a name with a `/` or `|` in
# it, which may join a list or be part of the name (`ben@x/alice@x`, `ben/sales@x`), has the
# keys of both readings. The field is
# read as `normalise_email` reads an address: invisible marks dropped (a soft hyphen in a name
# had cut it), full-width characters as ASCII, and each name composed (NFC, in a UTF-8
# database; the whole field composed would join a mark to the `<` before a name): the key keeps
# ASCII letters only, and a decomposed `é` left an `e` that a composed one, as a request gives
# it, does not. The first and last 50 names of a field, each key at most 64 characters (a name
# has no more): a hostile field of thousands of `@` is not a write that takes seconds, nor a
# key past what an index row holds.
_SQL_FULLWIDTH = "".join(chr(c) for c in FULLWIDTH).replace("'", "''")
_SQL_HALFWIDTH = "".join(chr(c) for c in FULLWIDTH.values()).replace("'", "''")
_EMAIL_NAME_START = f'^.*[{_SQL_BLANKS}<>,;:()\\[\\]"]'
_EMAIL_NAMES = 50
_EMAIL_KEYS_BODY = f"""DECLARE
    keys text[];
    parts text[];
    n integer;
    name text;
    names text[];
    whole text;
    composing boolean := false;
BEGIN
    IF field ~ '[^\x01-\x7f]' THEN
        field := translate(regexp_replace(field, '[{_SQL_INVISIBLE}]', '', 'g'),
            '{_SQL_FULLWIDTH}', '{_SQL_HALFWIDTH}');
        composing := current_setting('server_encoding') = 'UTF8';
    END IF;
    whole := CASE WHEN composing THEN normalize(field, NFC) ELSE field END;
    keys := ARRAY[left({email_prefilter_sql("whole")}, 64)];
    parts := string_to_array(field, '@');
    n := coalesce(array_length(parts, 1), 1) - 1;
    FOR i IN 1 .. n
    LOOP
        CONTINUE WHEN i > {_EMAIL_NAMES} AND i <= n - {_EMAIL_NAMES};
        name := regexp_replace(rtrim(parts[i], '"'''), '{_EMAIL_NAME_START}', '');
        names := ARRAY[name];
        IF name ~ '[/|]' THEN  -- a list's mark, or a character of the name (`ben/sales@`)
            names := names || regexp_replace(name, '^.*[/|]', '');
        END IF;
        FOREACH name IN ARRAY names
        LOOP
            IF composing THEN
                name := normalize(name, NFC);
            END IF;
            name := regexp_replace(lower(split_part(name, '+', 1)), '[^a-z0-9]', '', 'g');
            keys := array_append(keys, left(name, 64));
        END LOOP;
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


def _function_name(kind: str, body: str) -> str:
    return f"lethe_{kind}_keys_{hashlib.sha256(body.encode()).hexdigest()[:8]}"


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


PHONE_KEYS = _function_name("phone", _PHONE_KEYS_BODY)
PHONE_KEYS_DDL = _function_ddl(PHONE_KEYS, _PHONE_KEYS_BODY)
EMAIL_KEYS = _function_name("email", _EMAIL_KEYS_BODY)
EMAIL_KEYS_DDL = _function_ddl(EMAIL_KEYS, _EMAIL_KEYS_BODY)


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


def email_match_sql(column: str, keys: str) -> str:
    """A column's field holds an address with one of these keys (`keys`: a parameter, text[])."""
    return f"{EMAIL_KEYS}({column}) && {keys}"


def email_key_index(name: str, table: str, column: str) -> tuple[str, ...]:
    """DDL of the function and the GIN index of a column's e-mail keys, replacing the index of
    an earlier expression (a B-tree of the field's one key before issue 17's fifteenth part)."""
    return (EMAIL_KEYS_DDL, *_key_index(name, table, f"{EMAIL_KEYS}({column})", gin=True))


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
    return f"upper(translate({spaceless}, '{DASHES}', '{_HYPHENS}'))"


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
