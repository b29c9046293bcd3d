"""Where the directory worker may act and where restricted entries go: DNs parsed by ldap3's
RFC 4514 parser, never split on commas (services/directory/dn.py, tree.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.directory.dn import Dn, unescape
from services.directory.ldap import LdapError
from services.directory.settings import LdapSettings
from services.directory.store import DirectoryAdapter, DirectorySession
from services.directory.tree import PlacementError, Tree
from shared.identity import Identities
from shared.worker.ports import SearchTooBroad

BASE = "dc=lethe,dc=test"
PEOPLE = Dn.parse(f"ou=people,{BASE}")
PARTNERS = Dn.parse(f"ou=partners,{BASE}")
TREE = Tree.configure(BASE, [str(PEOPLE), str(PARTNERS)])


def test_an_escaped_comma_or_plus_stays_inside_its_rdn() -> None:
    # slapd answers with hex escapes; people write backslash escapes: the same DN.
    written = Dn.parse(f"cn=Hartley\\, Alice \\+ Co+uid=a\\,b,OU=People,{BASE}")
    answered = Dn.parse(f"uid=a\\2Cb+cn=hartley\\2C alice \\2B co,ou=people,{BASE}")
    assert len(written) == 4 and written.key == answered.key
    assert written.parent.key == PEOPLE.key  # split(",") would have made "Alice \+ Co+uid=a\" a parent
    assert written.rdn == "cn=Hartley\\, Alice \\+ Co+uid=a\\,b"
    assert unescape(written.rdns[0][0][1]) == "Hartley, Alice + Co"
    assert unescape("caf\\C3\\A9 \\5C") == "café \\"


def test_subtrees_are_compared_rdn_by_rdn() -> None:
    assert Dn.parse(f"uid=x,ou=people,{BASE}").below(PEOPLE)
    assert not Dn.parse(f"uid=x,ou=staffpeople,{BASE}").below(PEOPLE)  # a string suffix, not a subtree
    nested = Dn.parse(f"uid=x,ou=a\\,b,ou=people,{BASE}")
    assert nested.below(PEOPLE) and nested.parent.parent.key == PEOPLE.key
    assert not PEOPLE.below(PEOPLE) and PEOPLE.within(PEOPLE)


def test_subject_bases_default_to_people_and_accept_one_dn_or_a_json_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LETHE_LDAP_PASSWORD", "p")
    assert [str(b) for b in LdapSettings().tree().subject_bases] == [f"ou=people,{BASE}"]
    monkeypatch.setenv("LETHE_LDAP_SUBJECT_BASES", f"ou=partners, {BASE}")
    assert LdapSettings().tree().subject_bases[0].key == PARTNERS.key
    monkeypatch.setenv("LETHE_LDAP_SUBJECT_BASES", f'["ou=people,{BASE}", "ou=partners,{BASE}"]')
    assert [b.key for b in LdapSettings().tree().subject_bases] == [PEOPLE.key, PARTNERS.key]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ou=people,dc=other,dc=test", "not under LETHE_LDAP_BASE_DN"),
        (BASE, "not under LETHE_LDAP_BASE_DN"),  # the whole directory: staff and services too
        ("ou=people,,dc=lethe", "not a distinguished name"),
        (f"ou=x,ou=restricted,{BASE}", "restricted container"),
        (f'["ou=people,{BASE}", "ou=emea,ou=people,{BASE}"]', "overlaps"),
        ('["ou=people,dc=lethe,dc=test"', "not a JSON list"),
    ],
)
def test_a_bad_subject_base_stops_the_worker_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("LETHE_LDAP_PASSWORD", "p")
    monkeypatch.setenv("LETHE_LDAP_SUBJECT_BASES", value)
    with pytest.raises(ValidationError, match=f"LETHE_LDAP_SUBJECT_BASES: .*{problem}"):
        LdapSettings()


def test_a_malformed_base_dn_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_LDAP_PASSWORD", "p")
    monkeypatch.setenv("LETHE_LDAP_BASE_DN", "dc=lethe,=test")
    with pytest.raises(ValidationError, match="LETHE_LDAP_BASE_DN"):
        LdapSettings()


def test_a_restricted_entry_goes_back_under_exactly_its_original_parent() -> None:
    origin = Dn.parse(f"ou=Sales\\2C EMEA+l=Paris,ou=partners,{BASE}")
    entry = Dn.parse(f"cn=O'Brien\\, Pat+uid=pob,{origin}")
    container = TREE.destination(entry, restrict=True)
    assert container is not None and container.parent.key == TREE.restricted.key
    # The container's name is all there is: parse it again as slapd would answer it.
    moved = Dn.parse(f"{entry.rdn},{container}")
    assert TREE.is_restricted(moved) and not TREE.in_scope(moved)
    back = TREE.destination(moved, restrict=False)
    assert back is not None and back.key == origin.key


def test_an_entry_already_where_it_belongs_is_left_alone() -> None:
    entry = Dn.parse(f"uid=x,ou=people,{BASE}")
    moved = Dn.parse(f"uid=x,{TREE.container_for(entry.parent)}")
    assert TREE.destination(entry, restrict=False) is None  # already lifted
    assert TREE.destination(moved, restrict=True) is None  # already restricted


def test_entries_outside_the_subject_bases_are_never_changed() -> None:
    for dn in (f"uid=x,ou=staff,{BASE}", f"cn=admin,{BASE}", f"ou=people,{BASE}"):
        with pytest.raises(PlacementError):
            TREE.check_may_change(Dn.parse(dn))
        with pytest.raises(PlacementError):
            TREE.destination(Dn.parse(dn), restrict=True)
    # A container naming a parent outside the subject bases (written by hand, or the setting
    # changed since): the lift is refused, not carried out into ou=staff.
    staff = TREE.container_for(Dn.parse(f"ou=staff,{BASE}"))
    with pytest.raises(PlacementError, match="outside LETHE_LDAP_SUBJECT_BASES"):
        TREE.origin(Dn.parse(f"uid=x,{staff}"))


def test_an_entry_restricted_by_an_earlier_version_is_lifted_into_people() -> None:
    legacy = Dn.parse(f"uid=x,ou=restricted,{BASE}")
    assert TREE.origin(legacy).key == PEOPLE.key
    with pytest.raises(PlacementError):
        Tree.configure(BASE, [str(PARTNERS)]).origin(legacy)


def test_the_directory_has_a_thread_for_each_subject_the_worker_handles_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fewer, and a call queued for a thread would spend its deadline waiting."""
    monkeypatch.setenv("LETHE_LDAP_PASSWORD", "p")
    monkeypatch.setenv("LETHE_DATABASE_URL", "postgresql://127.0.0.1/unused")  # not connected to
    monkeypatch.setenv("LETHE_WORKER_CONCURRENCY", "13")
    adapter = DirectoryAdapter.from_env()
    try:
        assert adapter.directory._threads._max_workers == 13
    finally:
        adapter.directory.close()


class _Refusing:
    def __init__(self, code: int) -> None:
        self.code = code

    async def find(self, identities: Identities) -> list[object]:
        raise LdapError(f"LDAP result {self.code}", self.code)


@pytest.mark.parametrize(("code", "raised"), [(4, SearchTooBroad), (11, SearchTooBroad), (32, LdapError)])
async def test_a_size_limit_tells_the_worker_to_ask_fewer_at_a_time(
    code: int, raised: type[Exception]
) -> None:
    """sizeLimitExceeded and adminLimitExceeded: the holds' identifiers are searched again in
    halves (shared/worker/handler.py); any other failure stays the command's."""
    session = DirectorySession(None, _Refusing(code))  # type: ignore[arg-type]
    with pytest.raises(raised):
        await session.find(Identities(emails=["alice@example.com"]))
