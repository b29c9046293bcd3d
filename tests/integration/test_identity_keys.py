"""One normalisation (shared/identity.py), proved against PostgreSQL: for generated spellings of
one phone number or one e-mail address (the ways people and systems write them), the Python
normalisation gives one value, and the coarse key PostgreSQL computes from the spelling as
stored equals the key of that value, so a store's candidate query never leaves a true match out."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Iterator

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.db import ensure_database
from shared.identity import mailbox, normalise_email, normalise_id, normalise_phone
from shared.keys import (
    EMAIL_KEYS,
    EMAIL_KEYS_DDL,
    PHONE_KEYS,
    PHONE_KEYS_DDL,
    email_key_index,
    email_prefilter,
    id_key_index,
    id_key_sql,
    id_prefilter,
    phone_key_index,
    phone_prefilter,
)

pytestmark = pytest.mark.integration
LOOP = asyncio.new_event_loop()


@pytest.fixture(scope="module")
def conn(pg_server: str) -> Iterator[asyncpg.Connection]:
    connection = LOOP.run_until_complete(asyncpg.connect(f"{pg_server}/postgres"))
    LOOP.run_until_complete(connection.execute("BEGIN"))  # the phone keys' function, never committed
    LOOP.run_until_complete(connection.execute(PHONE_KEYS_DDL))
    LOOP.run_until_complete(connection.execute(EMAIL_KEYS_DDL))
    yield connection
    LOOP.run_until_complete(connection.execute("ROLLBACK"))
    LOOP.run_until_complete(connection.close())


def sql_key(conn: asyncpg.Connection, expression: str, value: str) -> str:
    return str(
        LOOP.run_until_complete(conn.fetchval(f"SELECT {expression} FROM (SELECT $1::text AS v) t", value))
    )


@st.composite
def phone_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """(a spelling, the E.164 number it must normalise to, with its extension)."""
    country, national = draw(
        st.sampled_from(
            [
                ("44", st.from_regex(r"7[0-9]{9}", fullmatch=True)),  # UK mobile
                ("44", st.from_regex(r"20[0-9]{8}", fullmatch=True)),  # London
                ("44", st.from_regex(r"1632[0-9]{6}", fullmatch=True)),  # UK geographic
                ("1", st.from_regex(r"415[2-9][0-9]{6}", fullmatch=True)),  # US
                ("33", st.from_regex(r"6[0-9]{8}", fullmatch=True)),  # French mobile
            ]
        )
    )
    digits = draw(national)
    sep = draw(st.sampled_from(["", " ", "-", ".", "/", "  "]))
    cut = draw(st.integers(2, len(digits) - 2))
    body = digits[:cut] + sep + digits[cut:]
    if country == "44":
        prefix = draw(st.sampled_from(["0", "+44 ", "+44", "0044 ", "+44 (0)", "+44(0)", "tel:+44-", "(0"]))
        if prefix == "(0":
            body, prefix = digits[:cut] + ")" + sep + digits[cut:], "(0"
    else:
        prefix = draw(st.sampled_from([f"+{country} ", f"00{country} ", f"tel:+{country}-", f"+{country}"]))
    extension, ext = draw(
        st.sampled_from(
            [
                ("", ""),
                (" x123", "123"),
                (" ext. 12", "12"),
                ("#22", "22"),
                (";ext=5", "5"),
                (" extension 7", "7"),
                (" extn 012", "012"),
                (",12", "12"),  # a dialler's pause
                (",,34", "34"),
                ("~56", "56"),
                (" int 78", "78"),
                (" (ext 12)", "12"),
                (" \uff58\uff11\uff12", "12"),  # full-width x and digits
                (" \uff0391", "91"),
            ]
        )
    )
    label = draw(st.sampled_from(["", "Tel: ", "Fax: ", "mobile "]))  # words before the number
    space = draw(st.sampled_from(["", " ", "\t", "\u202a", "\u200e"]))  # and marks a mail client adds
    spelling = space + label + prefix + body + extension + space
    return spelling, f"+{country}{digits}" + (f";ext={ext}" if ext else "")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(phone_spellings())
def test_every_spelling_of_a_number_is_one_number_with_one_key(
    conn: asyncpg.Connection, spelled: tuple[str, str]
) -> None:
    spelling, e164 = spelled
    assert normalise_phone(spelling) == e164
    keys = LOOP.run_until_complete(conn.fetchval(f"SELECT {PHONE_KEYS}($1)", spelling))
    assert phone_prefilter(e164) in keys


@pytest.mark.parametrize(
    "field",
    [
        "07700 900461 - 07700 900462",
        "07700 900461/07700 900462",
        "07700900462/07700900461",
        "07700 900461 07700 900462",
        "+44 7700 900461 +44 7700 900462",
        "+44 (0)1632 960123\n+44 (0)7700 900461",
        "020 7946 0000, 07700 900461 or 07700 900462",
        "020 7946 0002 / 07700 900461 / 020 7946 0003",
        "Mob: 07700 900461 (evenings), office 020 7946 0000 ext. 12",
        "07700 900461".translate({n: 0xFF10 + n - 48 for n in range(48, 58)}),  # full-width digits
        "07700 900461".translate({n: 0x0660 + n - 48 for n in range(48, 58)}),  # Arabic-Indic
        "07700 900461".translate({n: 0x0966 + n - 48 for n in range(48, 58)}),  # Devanagari
        "07700 90046" + chr(0x1D7CF),  # the last, mathematical bold
    ],
)
def test_each_number_in_a_field_is_found_by_its_key(conn: asyncpg.Connection, field: str) -> None:
    """However several numbers share a field: the first, a middle one, the last (the first was
    missed where only punctuation or a space stood between them, a middle one always)."""
    keys = LOOP.run_until_complete(conn.fetchval(f"SELECT {PHONE_KEYS}($1)", field))
    assert phone_prefilter("+447700900461") in keys, keys


LOCAL = st.from_regex(r"[a-z0-9]{1,10}([._'-][a-z0-9]{1,8}){0,2}", fullmatch=True)
UNICODE_LOCAL = st.sampled_from(["josé", "zoë.brown", "søren", "müller", "jürgen.k"])
DOMAIN = st.sampled_from(
    [
        ("example.co.uk", "example.co.uk"),
        ("Example.COM", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("münchen.de", "xn--mnchen-3ya.de"),
    ]
)


@st.composite
def email_spellings(draw: st.DrawFn) -> tuple[str, str]:
    local = draw(st.one_of(LOCAL, UNICODE_LOCAL))
    tag = draw(st.sampled_from(["", "+news", "+a.b"]))
    domain, ascii_domain = draw(DOMAIN)
    written_local = draw(st.sampled_from([local, local.upper(), local.title()]))
    address = f"{written_local}{tag}@{domain}"
    form = draw(
        st.sampled_from(
            [
                "{a}",
                " {a} ",
                "<{a}>",
                "Alice Hartley <{a}>",
                "mailto:{a}",
                "mailto:<{a}>",
                "\t{a}\n",
                "{a}\r",  # the review found "x@y\r" survived an erasure when SQL trimmed only spaces
                "\r\n{a}\r\n",
                "\u00a0{a}\u00a0",
                "\u00a0mailto:{a}",
                # Invisible characters copied with the address (a byte-order mark, direction
                # marks, a zero-width space): dropped, as no reader sees them.
                "\ufeffmailto:{a}",
                "\u200e{a}\u200f",
                "{a}\u200b",
                "{a} (work)",  # a comment after it (RFC 5322), or the old form of a display name
                "{a} (Alice Hartley);",
                "Alice Hartley <{a}> (home)",
                '"Hartley, Alice ({a})" <{a}>',  # as Exchange writes a name
                "mailto: {a}",
            ]
        )
    )
    return form.format(a=address), f"{local.lower()}{tag.lower()}@{ascii_domain}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(email_spellings())
def test_every_spelling_of_an_address_is_one_address_with_one_key(
    conn: asyncpg.Connection, spelled: tuple[str, str]
) -> None:
    spelling, expected = spelled
    assert normalise_email(spelling) == expected
    # The key ignores the sub-address: a variant (alice+news@) is a candidate for review.
    assert email_prefilter(mailbox(expected)) == email_prefilter(expected)
    # The field's keys have it, decomposed too (`é` as `e` and its accent).
    for stored in (spelling, unicodedata.normalize("NFD", spelling)):
        keys = LOOP.run_until_complete(conn.fetchval(f"SELECT {EMAIL_KEYS}($1)", stored))
        assert email_prefilter(expected) in keys, (stored, keys)


@pytest.mark.parametrize(
    "field",
    [
        "Ben Hartley <ben.hartley@example.co.uk>, Alice Hartley <alice.hartley@example.co.uk>",
        "Alice Hartley <alice.hartley@example.co.uk>, Ben Hartley <ben.hartley@example.co.uk>",
        "ben.hartley@example.co.uk,alice.hartley@example.co.uk",
        "ben.hartley@example.co.uk; Alice.Hartley+news@example.co.uk",
        "ben.hartley@example.co.uk\nmailto:alice.hartley@example.co.uk",
        '"Hartley, Ben" <ben.hartley@example.co.uk>; "alice.hartley"@example.co.uk',
        "Alice Hartley <alice.hartley@example.co.uk> (home)",
        "(alice.hartley@example.co.uk)",
        "[alice.hartley@example.co.uk]",
        "\uff21lice.hartley@example.co.uk",  # full-width, as an East Asian input method types it
        "alice.hartley\uff20example.co.uk",
        "Alice <alice.hart\u00adley@example.co.uk> (work)",  # a soft hyphen had cut the name
        "Ben O'Neill <ben.o'neill@example.ie>, Alice <alice.hartley@example.co.uk> (work)",
        "ben@example.org/alice.hartley@example.co.uk",
        "ben@example.org|alice.hartley@example.co.uk",
        ", ".join([*(f"p{n}@example.org" for n in range(20)), "alice.hartley@example.co.uk"])
        + ", "
        + ", ".join(f"q{n}@example.org" for n in range(20)),
        "Alice " + "@ " * 20 + "<alice.hartley@example.co.uk> (" + "@ " * 20 + ")",
        "Bob<\u0338alice.hartley@example.co.uk>",  # composed whole, `<` and the mark are one sign
    ],
)
def test_each_address_in_a_field_is_found_by_its_key(conn: asyncpg.Connection, field: str) -> None:
    """However several addresses share a field (only the first, or a display form's last, had
    a key: the others were never found, nor the record put to a person)."""
    keys = LOOP.run_until_complete(conn.fetchval(f"SELECT {EMAIL_KEYS}($1)", field))
    assert email_prefilter("alice.hartley@example.co.uk") in keys, keys


@pytest.mark.parametrize(
    "field", ["Seán O'Brien <sean.o'brien@example.ie> (work)", "sean.o'brien@example.ie, x@example.ie"]
)
def test_an_apostrophe_in_a_name_is_part_of_it(conn: asyncpg.Connection, field: str) -> None:
    keys = LOOP.run_until_complete(conn.fetchval(f"SELECT {EMAIL_KEYS}($1)", field))
    assert email_prefilter("sean.o'brien@example.ie") in keys, keys


@pytest.mark.parametrize(
    "field", ["x@example.org, ben/sales@example.org", "Ben <\u0338ben/sales@example.org> (x)"]
)
def test_a_slash_in_a_name_may_be_part_of_it(conn: asyncpg.Connection, field: str) -> None:
    """`/` and `|` may join a list's addresses or be part of one's name: a field has the keys
    of both readings (a mark joined to the `<` before the name, the whole field's key missed)."""
    keys = LOOP.run_until_complete(conn.fetchval(f"SELECT {EMAIL_KEYS}($1)", field))
    assert email_prefilter(normalise_email("ben/sales@example.org")) in keys, keys


def test_a_field_of_thousands_of_names_has_a_bounded_number_of_keys_none_past_an_index_row(
    conn: asyncpg.Connection,
) -> None:
    """The first and last fifty names: a list's subject is among them also behind many other
    `@` (full-width ones in a display name); a key has at most a name's 64 characters."""
    keys = LOOP.run_until_complete(conn.fetchval(f"SELECT {EMAIL_KEYS}($1)", "a@" * 50_000))
    assert len(keys) <= 101
    behind = "Team\uff20" * 40 + "Alice <alice.hartley@example.co.uk> (work)"
    assert "alicehartley" in LOOP.run_until_complete(conn.fetchval(f"SELECT {EMAIL_KEYS}($1)", behind))
    long = LOOP.run_until_complete(conn.fetchval(f"SELECT {EMAIL_KEYS}($1)", "x@" + "a" * 3000 + "@y.com"))
    assert max(map(len, long)) == 64


@pytest.mark.parametrize(
    "stored", ["C-1002", "C-1002 ", " C-1002", "\tC-1002\r\n", "\u00a0C-1002", "C-1002\u200b"]
)
def test_a_customer_id_as_stored_has_the_key_of_its_normal_form(
    conn: asyncpg.Connection, stored: str
) -> None:
    """A hold or a request naming C-1002 finds the account stored as "C-1002 " (the id compared
    raw, it did not: the account was left out of both, while a search by e-mail erased it)."""
    assert normalise_id(stored) == "C-1002"
    assert sql_key(conn, id_key_sql("v"), stored) == "C-1002"
    # In another case and with a typographic dash, the same key: a person decides whose.
    other = stored.replace("C-", "c\u2011")
    assert sql_key(conn, id_key_sql("v"), other) == id_prefilter(normalise_id(other)) == "C-1002"


async def test_an_index_on_a_key_whose_expression_changed_is_replaced_not_kept(fresh_db: str) -> None:
    """Each index is maintained on every write: one left from an earlier key expression (or the
    plain index a key replaced) must go when the new one is made."""
    await ensure_database(fresh_db)
    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute("CREATE TABLE accounts (customer_id text, email text, phone text)")
        await conn.execute("CREATE INDEX accounts_phone_key ON accounts (right(phone, 6))")  # before digests
        await conn.execute("CREATE INDEX accounts_phone_key_0badc0de ON accounts (left(phone, 6))")
        await conn.execute("CREATE INDEX accounts_phone_key_tail_0badc0de ON accounts (right(phone, 5))")
        await conn.execute("CREATE INDEX accounts_email_key_0badc0de ON accounts (lower(email))")
        await conn.execute("CREATE INDEX accounts_customer ON accounts (customer_id)")
        await conn.execute("CREATE INDEX accounts_email_key_other_thing ON accounts (email)")  # not ours
        for statement in (
            *email_key_index("accounts_email_key", "accounts", "email"),
            *id_key_index("accounts_customer", "accounts", "customer_id"),
            *phone_key_index("accounts_phone_key", "accounts", "phone"),
        ):
            await conn.execute(statement)
        names = {
            r["indexname"]
            for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'accounts'")
        }
    finally:
        await conn.close()
    assert len(names) == 4 and "accounts_email_key_other_thing" in names
    assert {n[: -len("_12345678")] for n in names - {"accounts_email_key_other_thing"}} == {
        "accounts_email_key",
        "accounts_customer",
        "accounts_phone_key",  # one GIN index of each number's key (the B-trees of two, gone)
    }
