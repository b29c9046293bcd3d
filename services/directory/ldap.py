"""The LDAP side of the directory worker. ldap3 is synchronous, so every call runs in a worker
thread with a connection of its own (ldap3 connections are not thread-safe)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal

from ldap3 import BASE, NO_ATTRIBUTES, SUBTREE, Connection, Server
from ldap3.utils.conv import escape_filter_chars
from opentelemetry.trace import Span, SpanKind

from services.directory.dn import Dn, unescape
from services.directory.settings import LdapSettings, tls_for
from services.directory.tree import BASES_VARIABLE
from shared.identity import Identities, extension, mailbox, phone_variants
from shared.telemetry.messaging import TRACER

NO_SUCH_OBJECT = 32
ALREADY_EXISTS = 68


@dataclass(frozen=True)
class Entry:
    entry_uuid: str
    dn: str
    uid: list[str] = field(default_factory=list)
    mail: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)  # telephoneNumber and mobile


def _span(operation: str) -> AbstractContextManager[Span]:
    """A CLIENT span per LDAP call (the filter and DNs are personal data: never recorded)."""
    return TRACER.start_as_current_span(
        f"ldap {operation}", kind=SpanKind.CLIENT, attributes={"lethe.ldap.operation": operation}
    )


class LdapError(RuntimeError):
    """An LDAP result other than success; carries the result code, never the DN."""


class Directory:
    def __init__(self, settings: LdapSettings, development: bool = False) -> None:
        self.settings = settings
        self.tls = tls_for(settings, development)
        self.tree = settings.tree()
        self.people = str(self.tree.subject_bases[0])  # where the seed writes
        self.restricted = str(self.tree.restricted)
        self._local = threading.local()

    def connect(self) -> Connection:
        server = Server(self.settings.url, connect_timeout=5, tls=self.tls)
        return Connection(
            server,
            self.settings.bind_dn,
            self.settings.password.get_secret_value(),
            auto_bind=True,
            receive_timeout=10,
        )

    @contextmanager
    def bound(self) -> Iterator[Connection]:
        """This thread's bound connection, made once and kept: a connect and bind per call cost
        more than the call. A connection that failed is dropped, so the next call reconnects
        (slapd restarted, network blip)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self.connect()
        try:
            yield conn
        except Exception:
            self._local.conn = None
            with suppress(Exception):
                conn.unbind()
            raise

    def subject_filter(self, ids: Identities) -> str | None:
        """Entries with any of the uids, addresses (or another sub-address of the same mailbox,
        for a person to decide on) or numbers, in each spelling a directory may hold."""
        terms = [f"(uid={escape_filter_chars(u)})" for u in ids.ldap_uids]
        for email in ids.emails:
            local, _, domain = mailbox(email).rpartition("@")
            terms.append(f"(mail={escape_filter_chars(email)})")
            # A Gmail mailbox under its other domain too (LDAP cannot ignore the dots in a name).
            for host in ("gmail.com", "googlemail.com") if domain == "gmail.com" else (domain,):
                terms.append(f"(mail={escape_filter_chars(local)}+*@{escape_filter_chars(host)})")
                if f"{local}@{host}" != email:
                    terms.append(f"(mail={escape_filter_chars(f'{local}@{host}')})")
        for attribute in ("telephoneNumber", "mobile"):
            terms += [f"({attribute}={v})" for v in _number_values(ids.phones)]
        if not terms:
            return None
        return f"(&(objectClass=inetOrgPerson)(|{''.join(terms)}))"

    async def find(self, ids: Identities) -> list[Entry]:
        query = self.subject_filter(ids)
        return [] if query is None else await asyncio.to_thread(self._search, query)

    def is_restricted(self, dn: str) -> bool:
        return self.tree.is_restricted(Dn.parse(dn))

    def _search(self, query: str) -> list[Entry]:
        """Only the subscriber subtrees and the restricted container: an entry anywhere else
        is not the worker's to find, whatever it holds. A search that fails (a subtree gone, a
        size limit) raises: read as "no entries", it would report an erasure done."""
        found: dict[str, Entry] = {}
        with _span("search") as span, self.bound() as conn:
            for base in self.tree.searched:
                conn.search(str(base), query, SUBTREE, attributes=SEARCHED)
                _check(conn)
                for item in _entries(conn):
                    attributes = item["attributes"]
                    uuid = _values(attributes, "entryUUID")[0]
                    found[uuid] = Entry(
                        uuid,
                        item["dn"],
                        uid=_values(attributes, "uid"),
                        mail=_values(attributes, "mail"),
                        phones=_values(attributes, "telephoneNumber") + _values(attributes, "mobile"),
                    )
            span.set_attribute("lethe.ldap.entries", len(found))
        return list(found.values())

    async def lookup(self, text: str) -> list[str]:
        """The directory's normal lookup (phone book search by name): only the subscriber
        subtrees, so restricted entries, moved to ou=restricted, are out of normal processing."""
        value = escape_filter_chars(text)
        query = f"(&(objectClass=inetOrgPerson)(|(cn=*{value}*)(sn=*{value}*)))"

        def search() -> list[str]:
            uids: list[str] = []
            with self.connect() as conn:
                for base in self.tree.subject_bases:
                    conn.search(str(base), query, SUBTREE, attributes=["uid"])
                    uids += [u for item in _entries(conn) for u in _values(item["attributes"], "uid")]
            return sorted(uids)

        return await asyncio.to_thread(search)

    async def existing(self, entry_uuids: Sequence[str]) -> set[str]:
        if not entry_uuids:
            return set()
        return {e.entry_uuid for e in await asyncio.to_thread(self._search, _uuid_filter(entry_uuids))}

    def ensure_tree(self) -> None:
        """The restricted container, the worker's own, is made if missing, and so is the
        default subscriber subtree (as before there was a setting). Subtrees named in
        LETHE_LDAP_SUBJECT_BASES must exist: a mistyped one would find no one, and every
        request would report nothing found."""
        with self.connect() as conn:
            if not self.settings.subject_bases:
                _add_ou(conn, self.tree.subject_bases[0])
            _add_ou(conn, self.tree.restricted)
            for base in self.tree.subject_bases:
                conn.search(str(base), "(objectClass=*)", BASE, attributes=NO_ATTRIBUTES)
                if conn.result["result"] == NO_SUCH_OBJECT:
                    raise LdapError(f"{BASES_VARIABLE}: {base} is not in the directory")
                _check(conn)

    async def delete(self, entry_uuids: Sequence[str], known: Mapping[str, str] | None = None) -> None:
        await asyncio.to_thread(self._apply, entry_uuids, "delete", known or {})

    async def move(
        self, entry_uuids: Sequence[str], restricted: bool, known: Mapping[str, str] | None = None
    ) -> None:
        """Into the restricted container, or back under the parent it came from."""
        change: Change = "restrict" if restricted else "lift"
        await asyncio.to_thread(self._apply, entry_uuids, change, known or {})

    def _apply(self, entry_uuids: Sequence[str], change: Change, known: Mapping[str, str]) -> None:
        """Delete or move each entry; an entry already gone counts as done. `known` maps
        entryUUIDs to the DNs a search of this command just returned: those are changed
        directly, saving a search per command; one that has moved since is searched."""
        if not entry_uuids:
            return
        with _span("delete" if change == "delete" else "modify_dn") as span, self.bound() as conn:
            span.set_attribute("lethe.ldap.entries", len(entry_uuids))
            unlocated = [u for u in entry_uuids if u not in known]
            for uuid in entry_uuids:
                if uuid in known and not self._change(conn, known[uuid], change):
                    unlocated.append(uuid)
            dns: list[str] = []
            for base in self.tree.searched if unlocated else ():
                conn.search(str(base), _uuid_filter(unlocated), SUBTREE, attributes=["entryUUID"])
                _check(conn)
                dns += [item["dn"] for item in _entries(conn)]
            for dn in dns:
                self._change(conn, dn, change)

    def _change(self, conn: Connection, dn_text: str, change: Change) -> bool:
        """Delete or move one entry; False if there is no entry at that DN."""
        dn = Dn.parse(dn_text)
        if change == "delete":
            self.tree.check_may_change(dn)
            conn.delete(dn_text)
        else:
            parent = self.tree.destination(dn, restrict=change == "restrict")
            if parent is None:  # already there: a redelivery, or another command got there first
                return True
            if change == "restrict":
                _add_ou(conn, parent)  # the container whose name records the original parent
            conn.modify_dn(dn_text, dn.rdn, new_superior=str(parent))
        if conn.result["result"] == NO_SUCH_OBJECT:
            return False
        _check(conn)
        return True


SEARCHED = ["entryUUID", "uid", "mail", "telephoneNumber", "mobile"]
Change = Literal["delete", "restrict", "lift"]


def _entries(conn: Connection) -> list[dict[str, Any]]:
    """The entries of the last search as ldap3 decoded them: its `entries` property would build
    an abstraction-layer object per entry, each time it is read, which cost more CPU than the
    search itself (py-spy)."""
    return [item for item in conn.response or () if item.get("type") == "searchResEntry"]


def _values(attributes: Mapping[str, Any], name: str) -> list[str]:
    """An attribute's values as text; ldap3 gives a single-valued one (entryUUID) bare."""
    value = attributes.get(name)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _uuid_filter(entry_uuids: Sequence[str]) -> str:
    return "(|" + "".join(f"(entryUUID={escape_filter_chars(u)})" for u in entry_uuids) + ")"


def _check(conn: Connection) -> None:
    if conn.result["result"] != 0:
        raise LdapError(f"LDAP result {conn.result['result']}")


def _add_ou(conn: Connection, dn: Dn) -> None:
    """An organizationalUnit at `dn` (named ou=...), unless there is one."""
    conn.add(str(dn), ["organizationalUnit"], {"ou": unescape(dn.rdns[0][0][1])})
    if conn.result["result"] != ALREADY_EXISTS:
        _check(conn)


def _number_values(phones: Sequence[str]) -> list[str]:
    """Filter values for entries holding one of these numbers, in each spelling a directory may
    hold its line: the line itself (the main number of an extension's switchboard: matching.py
    puts it to a person), and, for a number with an extension, the line followed by anything
    that ends in the extension's digits (`x12`, `ext. 012`; the normalised forms decide). Not
    the line followed by anything: that is every entry of a switchboard, past a directory's
    size limit. LDAP's telephoneNumber matching ignores spaces and hyphens only."""
    values: set[str] = set()
    for phone in phones:
        digits = extension(phone).lstrip("0") or extension(phone)
        for spelling in phone_variants(phone):
            value = escape_filter_chars(spelling)
            values.add(value)
            if digits:
                values.add(f"{value}*{escape_filter_chars(digits)}")
    return sorted(values)


__all__ = ["Directory", "Entry", "LdapError", "LdapSettings", "tls_for"]
