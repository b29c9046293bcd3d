"""Recordings (real WAV files + PostgreSQL index) and the directory (a real slapd)."""

from __future__ import annotations

import wave
from pathlib import Path
from uuid import uuid4

import pytest

from cli.seed import SeedFile
from services.directory import seed as directory_seed
from services.directory.dn import Dn
from services.directory.filters import subject_filter
from services.directory.ldap import Directory, LdapSettings
from services.directory.seed import DirectoryEntrySeed
from services.directory.store import DirectoryAdapter
from services.recordings import seed as recordings_seed
from services.recordings.files import resolve
from services.recordings.store import RecordingsAdapter
from shared.contracts import EraseSubject, LiftRestriction, RestrictSubject
from shared.crypto import subject_ref
from shared.identity import Identities
from shared.worker.handler import execute
from shared.worker.policy import ActOnEverything
from shared.worker.runtime import utc_clock
from tests.conftest import person, said_yes

pytestmark = pytest.mark.integration
ALICE = Identities(
    customer_ids=["C-1001"],
    emails=["alice.hartley@example.co.uk"],
    phones=["+447700900123"],
    ldap_uids=["ahartley"],
)
REF = subject_ref("k", ALICE)


def command(cls: type[EraseSubject] | type[RestrictSubject] | type[LiftRestriction], system: str):  # type: ignore[no-untyped-def]
    return cls(request_id="it-1", system=system, subject_ref=REF, sealed_identifiers="x", message_id=uuid4())


async def test_recordings_erasure_unlinks_audio_and_index(
    fresh_db: str, tmp_path: Path, demo_seed: SeedFile
) -> None:
    adapter = RecordingsAdapter(fresh_db, tmp_path)
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await recordings_seed.write(
                conn, tmp_path, person(demo_seed, "alice").recordings + person(demo_seed, "ben").recordings
            )
        files = sorted(p.name for p in tmp_path.rglob("*.wav"))
        assert files == ["REC-1001-01.wav", "REC-1001-02.wav", "REC-1002-01.wav"]
        with wave.open(str(next(tmp_path.rglob("REC-1002-01.wav")))) as audio:
            assert audio.getframerate() == 8000 and audio.getnframes() > 0
        # Only a phone number, written another way: it matches the caller and callee columns,
        # but the recordings are customer C-1001's, whom the request does not name: a shared
        # number finds them as well as it would find the subject's, so they await a person.
        only_phone = await execute(
            command(EraseSubject, "recordings"),
            Identities(phones=["07700 900123"]),
            adapter,
            ActOnEverything(),
            utc_clock,
        )
        assert only_phone.categories[0].in_review == 2 and only_phone.categories[0].erased == 0
        assert only_phone.reviews[0].reason == "shared_phone" and only_phone.reviews[0].conflicting == [
            "customer_ids"
        ]
        assert len(list(tmp_path.rglob("*.wav"))) == 3
        # With the customer id too, the same spelling of the number is the subject's.
        outcome = await execute(
            command(EraseSubject, "recordings"),
            Identities(customer_ids=["C-1001"], phones=["07700 900123"]),
            adapter,
            ActOnEverything(),
            utc_clock,
        )
        assert outcome.categories[0].erased == 2 and outcome.status == "done"
        assert sorted(p.name for p in tmp_path.rglob("*.wav")) == ["REC-1002-01.wav"]
        assert await adapter.pool.fetchval("SELECT count(*) FROM recordings") == 1
    finally:
        await adapter.close()


async def test_recordings_tolerate_a_file_already_gone(
    fresh_db: str, tmp_path: Path, demo_seed: SeedFile
) -> None:
    adapter = RecordingsAdapter(fresh_db, tmp_path)
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await recordings_seed.write(conn, tmp_path, person(demo_seed, "alice").recordings)
        next(tmp_path.rglob("REC-1001-01.wav")).unlink()  # e.g. a crash after the unlink
        outcome = await execute(
            command(EraseSubject, "recordings"), ALICE, adapter, ActOnEverything(), utc_clock
        )
        assert outcome.status == "done" and outcome.categories[0].erased == 2
    finally:
        await adapter.close()


def test_recording_paths_cannot_escape_the_storage_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        resolve(tmp_path, "../../etc/passwd")


def dns(ldap: LdapSettings) -> list[Dn]:
    return [Dn.parse(dn) for dn, _ in Directory(ldap).search_all("(objectClass=inetOrgPerson)")]


def entries(ldap: LdapSettings) -> set[str]:
    """Each entry's RDN and its parent's (uid=x,ou=people), wherever in the directory."""
    return {str(Dn(dn.rdns[:2])) for dn in dns(ldap)}


async def test_directory_erasure_deletes_the_entry_found_by_phone_spelling(
    fresh_db: str, slapd: LdapSettings, demo_seed: SeedFile
) -> None:
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        await directory_seed.write(
            adapter.directory,
            person(demo_seed, "alice").directory
            + person(demo_seed, "ben").directory
            + person(demo_seed, "chloe").directory,
        )
        # Chloe's entry holds "07700900789" in mobile; the request gives +44 spelling only. The
        # entry names a uid and an address the request does not: a person decides.
        phone_only = Identities(phones=["+44 7700 900789"])
        outcome = await execute(
            command(EraseSubject, "directory"), phone_only, adapter, ActOnEverything(), utc_clock
        )
        assert outcome.categories[0].in_review == 1 and outcome.status == "done"
        review = outcome.reviews[0]
        assert review.reason == "shared_phone" and review.matched == ["phones"]
        assert review.conflicting == ["emails", "ldap_uids"]
        assert "uid=cpatel,ou=people" in entries(slapd)
        # The reviewer says it is hers: that entry, and nothing else, goes.
        decided = said_yes(review, "it-1", "directory", REF)
        erased = await execute(decided, phone_only, adapter, ActOnEverything(), utc_clock)
        assert erased.categories[0].erased == 1 and erased.status == "done" and not erased.reviews
        assert "uid=cpatel,ou=people" not in entries(slapd)
        assert {"uid=ahartley,ou=people", "uid=bokafor,ou=people"} <= entries(slapd)
        # The same command again: the entry is already gone, which counts as done.
        again = await execute(decided, phone_only, adapter, ActOnEverything(), utc_clock)
        assert again.status == "done"
    finally:
        await adapter.close()


async def test_a_directory_number_with_an_extension_is_found_as_that_line_only(
    fresh_db: str, slapd: LdapSettings
) -> None:
    """A switchboard: each colleague's entry holds the main number with their extension, as
    people write it; the reception's holds the main number alone. The subject's extension
    finds their own entry, the main number and the extension written with a leading zero as
    variants (for a person), no colleague's (x112 ends as x12 does; LDAP returns it, the
    normalised forms drop it). The main number alone is searched for as itself, not as every
    value that starts with it: that is the whole switchboard, past a directory's size limit."""
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        board = [
            ("dsmith", "+44 20 7946 0000 x12"),
            ("ejones", "020 7946 0000 ext. 13"),
            ("reception", "02079460000"),
            ("fgreen", "020 7946 0000 x112"),
            ("gwhite", "020-7946-0000 ext 012"),
        ]
        await directory_seed.write(
            adapter.directory,
            [DirectoryEntrySeed(uid=uid, cn=uid, sn=uid, telephone_number=number) for uid, number in board],
        )
        async with adapter.session() as store:
            found = {
                r.owner.ldap_uids[0]: r for r in await store.find(Identities(phones=["020 7946 0000 x12"]))
            }
            main = {r.owner.ldap_uids[0] for r in await store.find(Identities(phones=["020 7946 0000"]))}
        assert set(found) == {"dsmith", "reception", "gwhite"}
        assert found["dsmith"].matched == Identities(phones=["+442079460000;ext=12"])
        for variant in ("reception", "gwhite"):
            assert not found[variant].matched
            assert found[variant].variants.phones == ["+442079460000;ext=12"]
        assert main == {"reception"}
    finally:
        await adapter.close()


async def test_the_directory_finds_a_number_and_a_mailbox_however_they_are_written(
    fresh_db: str, slapd: LdapSettings
) -> None:
    """Entries holding the subject's mobile with brackets, a trunk prefix in brackets, dots or
    slashes (LDAP's telephoneNumber matching ignores only spaces and hyphens), and Gmail
    addresses with the same dots under the other domain or a dotted sub-address: each is
    found, as the subject's or for a person to decide. A namesake's number is not."""
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        numbers = {
            "p-intl-trunk": "+44 (0)7700 900461",
            "p-area": "(07700) 900461",
            "p-dots": "07700.900.461",
            "p-0044": "0044 (0) 7700 900461",
            "p-slash": "07700/900461",
            "p-pairs": "0770.090.04.61",  # the last digits split too
            "p-other": "07700 900462",
        }
        mails = {
            "m-other-domain": "a.lice@googlemail.com",
            "m-dotted-tag": "a.lice+news@gmail.com",
            "m-other-dots": "al.ic.e@gmail.com",  # a short name with dots the request has not
            "m-every-dot": "a.l.i.c.e+x@googlemail.com",
        }
        strangers = {"m-alicia": "a.licia@gmail.com", "m-malice": "m.alice@gmail.com"}
        mails["m-display"] = "Alice <alice@googlemail.com>"
        long_name = {  # for alicehartley@: dots anywhere, written around too
            "m-long-dotted": "alice.hart.ley@gmail.com",
            "m-long-mailto": "mailto:alice.hartley@gmail.com",
            "m-long-display": "Alice Hartley <alice.hart.ley@googlemail.com>",
        }
        await directory_seed.write(
            adapter.directory,
            [DirectoryEntrySeed(uid=u, cn=u, sn=u, mobile=n) for u, n in numbers.items()]
            + [
                DirectoryEntrySeed(uid=u, cn=u, sn=u, mail=m)
                for u, m in (mails | long_name | strangers).items()
            ],
        )
        async with adapter.session() as store:
            by_phone = {
                r.owner.ldap_uids[0]: r for r in await store.find(Identities(phones=["07700 900461"]))
            }
            by_mail = {
                r.owner.ldap_uids[0]: r for r in await store.find(Identities(emails=["a.lice@gmail.com"]))
            }
            by_long = {
                r.owner.ldap_uids[0] for r in await store.find(Identities(emails=["alicehartley@gmail.com"]))
            }
        assert set(by_phone) == set(numbers) - {"p-other"}
        assert all(r.matched == Identities(phones=["+447700900461"]) for r in by_phone.values())
        assert set(by_mail) == set(mails)
        assert all(r.variants == Identities(emails=["a.lice@gmail.com"]) for r in by_mail.values())
        assert by_long == set(long_name)
    finally:
        await adapter.close()


async def test_the_directory_finds_an_address_with_something_written_around_it(
    fresh_db: str, slapd: LdapSettings
) -> None:
    """Values of `mail` as directories imported from other systems hold them: each reads as
    Carol's address (or, a list, goes to a person), and LDAP's exact match had found none.
    One that only ends or starts like hers is not hers."""
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        carols = {
            "c-display": "Carol Finch <carol.finch@example.org>",
            "c-mailto": "mailto:carol.finch@example.org",
            "c-mailto-space": "mailto: carol.finch@example.org",
            "c-dot": "carol.finch@example.org.",
            "c-quoted": '"carol.finch"@example.org',
            "c-comment": "carol.finch@example.org (home)",
            "c-display-comment": "Carol Finch <Carol.Finch@example.org> (home)",
        }
        listed = {"c-list": "dan.finch@example.org, carol.finch@example.org"}
        others = {
            "c-malice": "mcarol.finch@example.org",
            "c-longer": "carol.finch@example.org.evil.org",
        }
        await directory_seed.write(
            adapter.directory,
            [DirectoryEntrySeed(uid=u, cn=u, sn=u, mail=m) for u, m in (carols | listed | others).items()],
        )
        async with adapter.session() as store:
            found = {
                r.owner.ldap_uids[0]: r
                for r in await store.find(Identities(emails=["carol.finch@example.org"]))
            }
        assert set(found) == set(carols) | set(listed)
        assert all(found[u].matched == Identities(emails=["carol.finch@example.org"]) for u in carols)
        assert found["c-list"].unreadable == ("emails",)
        # A short name is searched by marks before it, not by what ends like it.
        jo = {"j-display": "Jo <jo@finch.example>", "j-mailto": "mailto: jo@finch.example"}
        jo_listed = {
            "j-list": "x@finch.example, jo@finch.example",
            "j-list2": "x@finch.example;jo@finch.example",
            "j-list3": "x@finch.example/jo@finch.example",
        }
        await directory_seed.write(
            adapter.directory,
            [
                DirectoryEntrySeed(uid=u, cn=u, sn=u, mail=m)
                for u, m in (jo | jo_listed | {"j-other": "bojo@finch.example"}).items()
            ],
        )
        async with adapter.session() as store:
            found = {r.owner.ldap_uids[0] for r in await store.find(Identities(emails=["jo@finch.example"]))}
        assert found == set(jo) | set(jo_listed)
    finally:
        await adapter.close()


async def test_an_address_is_not_searched_as_the_end_of_every_longer_one(
    fresh_db: str, slapd: LdapSettings
) -> None:
    """Six hundred entries end in `taylor@size.example` (first.last, as a company writes them),
    past a directory's usual size limit of 500: a term `*taylor@size.example*`, or one that
    slapd reads so (a leading space, which it drops), found them all for a Taylor, and a short
    one (`*r@size.example*`) for an R, and the search failed at that limit, and the erasure."""
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        await directory_seed.write(
            adapter.directory,
            [
                DirectoryEntrySeed(uid=f"s-{n}", cn="s", sn="s", mail=f"p{n}.taylor@size.example")
                for n in range(600)
            ],
        )
        for address in ("taylor@size.example", "r@size.example"):
            query = subject_filter(Identities(emails=[address]))
            assert query is not None
            assert adapter.directory.search_all(query) == [], address  # what LDAP returns
    finally:
        await adapter.close()


async def test_directory_uid_is_matched_without_regard_to_case_as_ldap_finds_it(
    fresh_db: str, slapd: LdapSettings, demo_seed: SeedFile
) -> None:
    """The entry is AHartley; LDAP's search for ahartley returns it; compared exactly
    afterwards, it was dropped: a request, or a hold, naming the uid so did not reach it."""
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        alice = [e.model_copy(update={"uid": "AHartley"}) for e in person(demo_seed, "alice").directory]
        await directory_seed.write(adapter.directory, alice + person(demo_seed, "ben").directory)
        async with adapter.session() as store:
            [record] = await store.find(Identities(ldap_uids=["ahartley"]))
        assert record.matched == Identities(ldap_uids=["ahartley"])
        outcome = await execute(
            command(EraseSubject, "directory"),
            Identities(ldap_uids=["ahartley"]),
            adapter,
            ActOnEverything(),
            utc_clock,
        )
        assert outcome.categories[0].erased == 1 and outcome.status == "done"
        assert not {e for e in entries(slapd) if e.lower().startswith("uid=ahartley,")}
        assert "uid=bokafor,ou=people" in entries(slapd)
    finally:
        await adapter.close()


async def test_directory_restriction_moves_the_entry_and_lift_moves_it_back(
    fresh_db: str, slapd: LdapSettings, demo_seed: SeedFile
) -> None:
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        await directory_seed.write(adapter.directory, person(demo_seed, "alice").directory)
        restricted = await execute(
            command(RestrictSubject, "directory"), ALICE, adapter, ActOnEverything(), utc_clock
        )
        assert restricted.status == "done" and restricted.categories[0].restricted == 1
        # Under ou=restricted, in a container named after where it came from.
        container = adapter.directory.tree.container_for(Dn.parse(f"ou=people,{slapd.base_dn}"))
        assert any(d.rdn == "uid=ahartley" and d.parent.key == container.key for d in dns(slapd))
        lifted = await execute(
            command(LiftRestriction, "directory"), ALICE, adapter, ActOnEverything(), utc_clock
        )
        assert lifted.status == "done" and lifted.categories[0].unrestricted == 1
        assert "uid=ahartley,ou=people" in entries(slapd)
    finally:
        await adapter.close()


async def test_directory_changes_an_entry_that_moved_after_the_search_found_it(
    fresh_db: str, slapd: LdapSettings, demo_seed: SeedFile
) -> None:
    """The DN a command's search returned is used directly; if the entry moved meanwhile (a
    restriction, an administrator), the stale DN answers noSuchObject and the entry is searched
    for by its entryUUID, not taken for gone."""
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        await directory_seed.write(adapter.directory, person(demo_seed, "alice").directory)
        directory = adapter.directory
        (found,) = await directory.find(ALICE)
        await directory.move([found.entry_uuid], restricted=True)  # someone else moves it
        await directory.delete([found.entry_uuid], known={found.entry_uuid: found.dn})
        assert not any("ahartley" in e for e in entries(slapd))
        # Already gone: the stale DN and the search both find nothing, which counts as done.
        await directory.delete([found.entry_uuid], known={found.entry_uuid: found.dn})
    finally:
        await adapter.close()


async def test_directory_filter_escapes_hostile_identifiers(
    fresh_db: str, slapd: LdapSettings, demo_seed: SeedFile
) -> None:
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        await directory_seed.write(adapter.directory, person(demo_seed, "ben").directory)
        # Built without validation: the escaping must hold even if a bad value got this far.
        hostile = Identities.model_construct(
            ldap_uids=["*", "b*"], emails=["*)(uid=*", "\\2a"], phones=[], customer_ids=[]
        )
        query = subject_filter(hostile)
        assert query is not None and "(uid=\\2a)" in query and "\\29\\28" in query
        assert await adapter.directory.find(hostile) == []
        # A Gmail mailbox is looked for under both of its domains, as given and without dots,
        # alone or with a tag; never by letters with anything between (half a directory).
        gmail = subject_filter(Identities(emails=["a.lice@gmail.com"]))
        assert gmail is not None and "*l*" not in gmail and "(mail=a.l.i.c.e@gmail.com)" in gmail
        for term in (
            "a.lice@googlemail.com",
            "alice@gmail.com",
            "alice+*@googlemail.com",
            "a.lice+*@gmail.com",
        ):
            assert f"(mail={term})" in gmail, term
        escaped = subject_filter(Identities.model_construct(emails=["a*b@gmail.com"], phones=[]))
        assert escaped is not None and "(mail=a\\2ab@gmail.com)" in escaped
    finally:
        await adapter.close()
