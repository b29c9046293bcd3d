"""The directory worker against a real slapd: it acts only in the subscriber subtrees, a lift
puts an entry back under exactly the parent it came from, and DNs with escaped characters
survive the round trip. The slapd is shared by the session: each test has people of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from ldap.filter import escape_filter_chars

from cli.processes import free_port, stop
from cli.slapd import start_slapd
from services.directory.dn import Dn, unescape
from services.directory.ldap import Directory, LdapError, LdapSettings
from services.directory.store import DirectoryAdapter
from shared.contracts import EraseSubject, LiftRestriction, RestrictSubject
from shared.crypto import subject_ref
from shared.identity import Identities
from shared.worker.handler import execute
from shared.worker.policy import ActOnEverything
from shared.worker.runtime import utc_clock

pytestmark = pytest.mark.integration
Command = type[EraseSubject] | type[RestrictSubject] | type[LiftRestriction]


def command(cls: Command, ids: Identities) -> EraseSubject | RestrictSubject | LiftRestriction:
    return cls(
        request_id=f"it-{uuid4().hex[:8]}",
        system="directory",
        subject_ref=subject_ref("k", ids),
        sealed_identifiers="x",
        message_id=uuid4(),
    )


def add(ldap: LdapSettings, dn: str, classes: list[str], **attributes: Any) -> None:
    Directory(ldap).add(dn, classes, attributes)


def add_ou(ldap: LdapSettings, dn: str) -> None:
    add(ldap, dn, ["organizationalUnit"], ou=unescape(Dn.parse(dn).rdns[0][0][1]))


def where(ldap: LdapSettings, mail: str) -> list[Dn]:
    """Every entry in the whole directory holding the address, wherever it is."""
    found = Directory(ldap).search_all(f"(mail={escape_filter_chars(mail)})")
    return sorted((Dn.parse(dn) for dn, _ in found), key=str)


def with_bases(ldap: LdapSettings, *bases: str) -> LdapSettings:
    return LdapSettings(**{**ldap.model_dump(), "subject_bases": list(bases)})


async def run(adapter: DirectoryAdapter, cls: Command, ids: Identities) -> Any:
    return await execute(command(cls, ids), ids, adapter, ActOnEverything(), utc_clock)


async def test_an_erasure_leaves_staff_and_service_entries_with_the_same_uid_and_address(
    fresh_db: str, slapd: LdapSettings
) -> None:
    base, mail = slapd.base_dn, "dana.confine@example.org"
    ids = Identities(emails=[mail], ldap_uids=["dconfine"])
    add_ou(slapd, f"ou=people,{base}")
    for ou in ("staff", "services"):
        add_ou(slapd, f"ou={ou},{base}")
    person = ["inetOrgPerson"]
    add(slapd, f"uid=dconfine,ou=people,{base}", person, uid="dconfine", cn="Dana", sn="C", mail=mail)
    # An employee who is also a subscriber (no uid: only the address, which is the subject's)
    # and a service account named like her: searched across the base DN, both were hers.
    add(slapd, f"cn=Dana Confine,ou=staff,{base}", person, cn="Dana Confine", sn="Confine", mail=mail)
    add(slapd, f"uid=dconfine,ou=services,{base}", person, uid="dconfine", cn="svc", sn="svc", mail=mail)
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        erased = await run(adapter, EraseSubject, ids)
        assert erased.status == "done" and erased.categories[0].erased == 1
    finally:
        await adapter.close()
    assert sorted(str(d.parent) for d in where(slapd, mail)) == [f"ou=services,{base}", f"ou=staff,{base}"]


async def test_a_lift_returns_the_entry_to_the_second_subtree_it_came_from(
    fresh_db: str, slapd: LdapSettings
) -> None:
    base, mail = slapd.base_dn, "pia.partner@example.org"
    ids = Identities(emails=[mail], ldap_uids=["ppartner"])
    emea = f"ou=emea,ou=partners,{base}"
    for dn in (f"ou=people,{base}", f"ou=partners,{base}", emea):
        add_ou(slapd, dn)
    add(slapd, f"uid=ppartner,{emea}", ["inetOrgPerson"], uid="ppartner", cn="Pia", sn="P", mail=mail)
    settings = with_bases(slapd, f"ou=people,{base}", f"ou=partners,{base}")
    adapter = DirectoryAdapter(fresh_db, settings)
    await adapter.start()
    try:
        restricted = await run(adapter, RestrictSubject, ids)
        assert restricted.status == "done" and restricted.categories[0].restricted == 1
        (moved,) = where(slapd, mail)
        assert moved.below(Dn.parse(f"ou=restricted,{base}"))
        # Redelivered with the DN it had before the move: still restricted, nothing else.
        (found,) = await adapter.directory.find(ids)
        await adapter.directory.move(
            [found.entry_uuid], restricted=True, known={found.entry_uuid: f"uid=ppartner,{emea}"}
        )
        assert where(slapd, mail) == [moved]
    finally:
        await adapter.close()
    # A worker started afresh knows where it came from: the entry's DN says.
    adapter = DirectoryAdapter(fresh_db, settings)
    await adapter.start()
    try:
        lifted = await run(adapter, LiftRestriction, ids)
        assert lifted.status == "done" and lifted.categories[0].unrestricted == 1
        (back,) = where(slapd, mail)
        assert back.key == Dn.parse(f"uid=ppartner,{emea}").key
        await adapter.directory.move([found.entry_uuid], restricted=False)  # redelivered: stays
        assert [d.key for d in where(slapd, mail)] == [back.key]
    finally:
        await adapter.close()


async def test_a_dn_with_escaped_commas_plus_signs_and_quotes_round_trips(
    fresh_db: str, slapd: LdapSettings
) -> None:
    base, mail = slapd.base_dn, "pat.obrien@example.org"
    ids = Identities(emails=[mail], ldap_uids=["pob.special"])
    team = f'ou=Sales\\, EMEA \\+ \\"UK\\",ou=partners,{base}'
    for dn in (f"ou=people,{base}", f"ou=partners,{base}", team):
        add_ou(slapd, dn)
    cn = 'O\'Brien, Pat + "Co" \\ x'
    original = f'cn=O\'Brien\\, Pat \\+ \\"Co\\" \\\\ x+uid=pob.special,{team}'
    add(slapd, original, ["inetOrgPerson"], cn=cn, uid="pob.special", sn="O'Brien", mail=mail)
    adapter = DirectoryAdapter(fresh_db, with_bases(slapd, f"ou=people,{base}", f"ou=partners,{base}"))
    await adapter.start()
    try:
        restricted = await run(adapter, RestrictSubject, ids)
        assert restricted.status == "done" and restricted.categories[0].restricted == 1
        assert all(d.below(Dn.parse(f"ou=restricted,{base}")) for d in where(slapd, mail))
        lifted = await run(adapter, LiftRestriction, ids)
        assert lifted.status == "done" and lifted.categories[0].unrestricted == 1
        assert [d.key for d in where(slapd, mail)] == [Dn.parse(original).key]
        erased = await run(adapter, EraseSubject, ids)
        assert erased.status == "done" and erased.categories[0].erased == 1 and where(slapd, mail) == []
    finally:
        await adapter.close()


async def test_an_entry_restricted_by_an_earlier_version_is_lifted_into_people(
    fresh_db: str, slapd: LdapSettings
) -> None:
    base, mail = slapd.base_dn, "lee.legacy@example.org"
    ids = Identities(emails=[mail], ldap_uids=["llegacy"])
    for dn in (f"ou=people,{base}", f"ou=restricted,{base}"):
        add_ou(slapd, dn)
    add(
        slapd,
        f"uid=llegacy,ou=restricted,{base}",
        ["inetOrgPerson"],
        uid="llegacy",
        cn="L",
        sn="L",
        mail=mail,
    )
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        lifted = await run(adapter, LiftRestriction, ids)
        assert lifted.status == "done" and lifted.categories[0].unrestricted == 1
        assert [d.key for d in where(slapd, mail)] == [Dn.parse(f"uid=llegacy,ou=people,{base}").key]
    finally:
        await adapter.close()


async def test_a_subject_base_missing_from_the_directory_stops_the_worker(
    fresh_db: str, slapd: LdapSettings
) -> None:
    adapter = DirectoryAdapter(fresh_db, with_bases(slapd, f"ou=peopel,{slapd.base_dn}"))
    try:
        with pytest.raises(LdapError, match="LETHE_LDAP_SUBJECT_BASES"):
            await adapter.start()
    finally:
        await adapter.close()


async def test_a_subject_base_that_disappears_fails_the_search_rather_than_finding_no_one(
    fresh_db: str, slapd: LdapSettings
) -> None:
    vanishing = f"ou=vanishing-{uuid4().hex[:8]},{slapd.base_dn}"
    add_ou(slapd, vanishing)
    adapter = DirectoryAdapter(fresh_db, with_bases(slapd, vanishing))
    await adapter.start()
    try:
        with Directory(slapd).session() as conn:
            conn.delete_s(vanishing)
        # Read as "no entries", an erasure would report itself done and verified.
        with pytest.raises(LdapError, match="LDAP result 32"):
            await adapter.directory.find(Identities(ldap_uids=["anyone"]))
    finally:
        await adapter.close()


async def test_a_lift_to_a_parent_deleted_since_fails_rather_than_reporting_it_done(
    fresh_db: str, slapd: LdapSettings
) -> None:
    """The modifyDN's "no such object" names the missing new parent, not the entry: read as
    "entry gone", the entry stayed restricted and the lift was reported done."""
    base, mail = slapd.base_dn, f"cy-{uuid4().hex[:6]}@example.org"
    branch = f"ou=branch-{uuid4().hex[:6]},ou=people,{base}"
    add_ou(slapd, f"ou=people,{base}")
    add_ou(slapd, branch)
    add(slapd, f"uid=cy,{branch}", ["inetOrgPerson"], cn="Cy", sn="Cy", uid="cy", mail=mail)
    ids = Identities(emails=[mail])
    adapter = DirectoryAdapter(fresh_db, slapd)
    await adapter.start()
    try:
        assert (await run(adapter, RestrictSubject, ids)).status == "done"
        with Directory(slapd).session() as conn:
            conn.delete_s(branch)
        with pytest.raises(LdapError, match="destination of a move is missing"):
            await run(adapter, LiftRestriction, ids)
        assert all(d.below(Dn.parse(f"ou=restricted,{base}")) for d in where(slapd, mail))
    finally:
        await adapter.close()


async def test_a_search_reference_in_a_subtree_fails_the_search(fresh_db: str, tmp_path: Path) -> None:
    """Part of a subscriber subtree held by another server: the search is incomplete, so it
    fails (an erasure reported done would leave whatever lives there); it is not followed. A
    slapd of its own: a referral object makes every search of the whole directory fail."""
    base, admin, password = "dc=lethe,dc=test", "cn=admin,dc=lethe,dc=test", uuid4().hex
    port = free_port()
    process = start_slapd(tmp_path, port, base, admin, password, tmp_path / "logs")
    try:
        own = LdapSettings(url=f"ldap://127.0.0.1:{port}", bind_dn=admin, password=password, base_dn=base)  # type: ignore[arg-type]
        add_ou(own, f"ou=people,{base}")
        add(
            own,
            f"ou=elsewhere,ou=people,{base}",
            ["referral", "extensibleObject"],
            ou="elsewhere",
            ref=f"ldap://10.255.255.1/ou=elsewhere,ou=people,{base}",
        )
        adapter = DirectoryAdapter(fresh_db, own)
        await adapter.start()
        try:
            with pytest.raises(LdapError, match="search reference"):
                await adapter.directory.find(Identities(ldap_uids=["anyone"]))
        finally:
            await adapter.close()
    finally:
        stop(process)
