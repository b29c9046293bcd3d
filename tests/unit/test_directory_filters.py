"""The directory worker's LDAP filters, without a directory (the integration tests search slapd
with them)."""

from __future__ import annotations

from services.directory.filters import SPREAD_MIN, dotted, subject_filter
from shared.identity import Identities, mailbox


def test_a_short_gmail_name_is_searched_in_every_spelling_gmail_reads_as_it() -> None:
    spellings = dotted("alice")
    assert len(spellings) == len(set(spellings)) == 2**4
    assert {"alice", "al.ice", "a.l.i.c.e", "alic.e"} <= set(spellings)
    assert {mailbox(f"{s}@gmail.com") for s in spellings} == {"alice@gmail.com"}
    query = subject_filter(Identities(emails=["Al.ice+news@gmail.com"]))
    assert query is not None
    for s in spellings:
        for host in ("gmail.com", "googlemail.com"):
            assert f"(mail={s}@{host})" in query and f"(mail={s}+*@{host})" in query
    assert "*l*" not in query  # never letters with anything between, for a short name


def test_a_long_gmail_name_is_searched_with_anything_between_its_letters_not_in_every_spelling() -> None:
    name = "alicehartley"
    assert len(name) >= SPREAD_MIN
    query = subject_filter(Identities(emails=[f"{name}@gmail.com"]))
    assert query is not None and "(mail=a*l*i*c*e*h*a*r*t*l*e*y@gmail.com)" in query
    assert "a.l.i" not in query  # 2**11 spellings would be a filter no directory takes
