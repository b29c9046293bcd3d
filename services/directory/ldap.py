"""The LDAP side of the directory worker, on python-ldap: OpenLDAP's own client library, whose
BER encoding is C (ldap3's pure-Python BER cost nine times the CPU per search, and the
directory worker twice the CPU of any other). python-ldap is synchronous, so every call runs in
a thread of the directory's own pool with a connection of its own, made once and kept.

Each call has a deadline of its own: libldap's timeouts do not cover an ldaps:// handshake
(with GnuTLS, a server that accepts and never answers held the call for good). A call past its
deadline fails (the command is tried again later); its thread stays blocked until the server
answers or goes, in the directory's own pool, so nothing else waits for it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import ldap
from ldap.filter import escape_filter_chars
from ldap.ldapobject import LDAPObject
from opentelemetry.trace import Span, SpanKind

from services.directory.dn import Dn, unescape
from services.directory.filters import subject_filter, uuid_filter
from services.directory.settings import LdapSettings, TlsChecks, tls_for
from services.directory.tree import BASES_VARIABLE
from shared.identity import Identities
from shared.telemetry.messaging import TRACER

NO_SUCH_OBJECT = 32
CALL_TIMEOUT_S = 30.0  # a whole call: connect, bind, each base's search (10 s each at most)
THREADS = 8  # tools and tests; the worker gives its concurrency: one connection per subject
Attributes = dict[str, list[str]]  # names in lower case, values as text
R = TypeVar("R")


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
    """An LDAP result other than success; carries the result code, never the DN (python-ldap's
    own exceptions quote the server's `matched` DN and diagnostic text: they are not kept)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def _results() -> Iterator[None]:
    try:
        yield
    except ldap.LDAPError as e:
        details = e.args[0] if e.args and isinstance(e.args[0], dict) else {}
        code = details.get("result")
        raise LdapError(f"LDAP result {code} ({type(e).__name__})", code) from None


class Directory:
    def __init__(
        self,
        settings: LdapSettings,
        development: bool = False,
        call_timeout_s: float = CALL_TIMEOUT_S,
        threads: int = THREADS,
    ) -> None:
        self.settings = settings
        self.tls = tls_for(settings, development)
        self.tree = settings.tree()
        self.people = str(self.tree.subject_bases[0])  # where the seed writes
        self.restricted = str(self.tree.restricted)
        self.call_timeout_s = call_timeout_s
        self._local = threading.local()
        # As many as the subjects the worker handles at once: a call queued for a thread would
        # spend its deadline waiting.
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="ldap")

    async def call(self, work: Callable[..., R], *args: object) -> R:
        """`work` in the directory's own threads, within the call deadline (TimeoutError past it),
        in the caller's context (as asyncio.to_thread: its spans are the command's children)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        running = loop.run_in_executor(self._threads, functools.partial(context.run, work, *args))
        return await asyncio.wait_for(running, self.call_timeout_s)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    def connect(self) -> LDAPObject:
        """A bound connection. Referrals are never chased: the bind would go to whatever
        server one names."""
        with _results():
            conn = ldap.initialize(self.settings.url)
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
            conn.set_option(ldap.OPT_REFERRALS, 0)
            # Aliases are not followed: one inside a subscriber subtree may name an entry outside.
            conn.set_option(ldap.OPT_DEREF, ldap.DEREF_NEVER)
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 5.0)
            conn.set_option(ldap.OPT_TIMEOUT, 10.0)
            if self.tls is not None:
                _configure_tls(conn, self.tls)
            conn.simple_bind_s(self.settings.bind_dn, self.settings.password.get_secret_value())
        return conn

    @contextmanager
    def session(self) -> Iterator[LDAPObject]:
        """A connection of its own for one piece of work (seeding, set-up, tools), unbound after."""
        conn = self.connect()
        try:
            yield conn
        finally:
            with suppress(ldap.LDAPError):
                conn.unbind_s()

    @contextmanager
    def bound(self) -> Iterator[LDAPObject]:
        """This thread's bound connection, made once and kept: a connect and bind per call cost
        more than the call. A connection that failed is dropped, so the next call reconnects
        (slapd restarted, network blip)."""
        conn: LDAPObject | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        try:
            with _results():
                yield conn
        except Exception:
            self._local.conn = None
            with suppress(Exception):
                conn.unbind_s()
            raise

    async def find(self, ids: Identities) -> list[Entry]:
        query = subject_filter(ids)
        return [] if query is None else await self.call(self._search, query)

    def is_restricted(self, dn: str) -> bool:
        return self.tree.is_restricted(Dn.parse(dn))

    def _search(self, query: str) -> list[Entry]:
        """Only the subscriber subtrees and the restricted container: an entry anywhere else
        is not the worker's to find, whatever it holds. A search that fails (a subtree gone, a
        size limit) raises: read as "no entries", it would report an erasure done."""
        found: dict[str, Entry] = {}
        with _span("search") as span, self.bound() as conn:
            for base in self.tree.searched:
                for dn, attributes in _search_subtree(conn, str(base), query, SEARCHED):
                    uuid = attributes["entryuuid"][0]
                    found[uuid] = Entry(
                        uuid,
                        dn,
                        uid=attributes.get("uid", []),
                        mail=attributes.get("mail", []),
                        phones=attributes.get("telephonenumber", []) + attributes.get("mobile", []),
                    )
            span.set_attribute("lethe.ldap.entries", len(found))
        return list(found.values())

    async def lookup(self, text: str) -> list[str]:
        """The directory's normal lookup (phone book search by name): only the subscriber
        subtrees, so restricted entries, moved to ou=restricted, are out of normal processing."""
        value = escape_filter_chars(text)
        query = f"(&(objectClass=inetOrgPerson)(|(cn=*{value}*)(sn=*{value}*)))"

        def search() -> list[str]:
            with self.session() as conn, _results():
                return sorted(
                    uid
                    for base in self.tree.subject_bases
                    for _, attributes in _search_subtree(conn, str(base), query, ["uid"])
                    for uid in attributes.get("uid", [])
                )

        return await self.call(search)

    def search_all(self, query: str, attributes: Sequence[str] = ("uid",)) -> list[tuple[str, Attributes]]:
        """Every entry under the base DN that the filter matches, wherever it is: for tools and
        tests, which look at the whole directory (the worker searches only its subtrees)."""
        with self.session() as conn, _results():
            return _search_subtree(conn, self.settings.base_dn, query, list(attributes))

    def add(self, dn: str, classes: Sequence[str], attributes: Mapping[str, str]) -> bool:
        """Add an entry unless one is there (False then): set-up and tests."""
        with self.session() as conn:
            return add_entry(conn, dn, classes, attributes)

    async def existing(self, entry_uuids: Sequence[str]) -> set[str]:
        if not entry_uuids:
            return set()
        return {e.entry_uuid for e in await self.call(self._search, uuid_filter(entry_uuids))}

    def ensure_tree(self) -> None:
        """The restricted container, the worker's own, is made if missing, and so is the
        default subscriber subtree (as before there was a setting). Subtrees named in
        LETHE_LDAP_SUBJECT_BASES must exist: a mistyped one would find no one, and every
        request would report nothing found."""
        with self.session() as conn:
            if not self.settings.subject_bases:
                _add_ou(conn, self.tree.subject_bases[0])
            _add_ou(conn, self.tree.restricted)
            for base in self.tree.subject_bases:
                with _results():
                    found = _exists(conn, str(base))
                if not found:
                    raise LdapError(f"{BASES_VARIABLE}: {base} is not in the directory", NO_SUCH_OBJECT)

    async def delete(self, entry_uuids: Sequence[str], known: Mapping[str, str] | None = None) -> None:
        await self.call(self._apply, entry_uuids, "delete", known or {})

    async def move(
        self, entry_uuids: Sequence[str], restricted: bool, known: Mapping[str, str] | None = None
    ) -> None:
        """Into the restricted container, or back under the parent it came from."""
        change: Change = "restrict" if restricted else "lift"
        await self.call(self._apply, entry_uuids, change, known or {})

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
                dns += [
                    dn for dn, _ in _search_subtree(conn, str(base), uuid_filter(unlocated), ["entryUUID"])
                ]
            for dn in dns:
                self._change(conn, dn, change)

    def _change(self, conn: LDAPObject, dn_text: str, change: Change) -> bool:
        """Delete or move one entry; False if there is no entry at that DN. A move whose
        destination is missing (a lift to a parent deleted since) raises: read as "entry gone",
        the entry would stay restricted and the lift be reported done."""
        dn = Dn.parse(dn_text)
        try:
            if change == "delete":
                self.tree.check_may_change(dn)
                conn.delete_s(dn_text)
                return True
            parent = self.tree.destination(dn, restrict=change == "restrict")
            if parent is None:  # already there: a redelivery, or another command got there first
                return True
            if change == "restrict":
                _add_ou(conn, parent)  # the container whose name records the original parent
            conn.rename_s(dn_text, dn.rdn, newsuperior=str(parent), delold=1)
            return True
        except ldap.NO_SUCH_OBJECT:
            if change != "delete" and _exists(conn, dn_text):
                missing = f"LDAP result {NO_SUCH_OBJECT}: the destination of a move is missing"
                raise LdapError(missing, NO_SUCH_OBJECT) from None
            return False


SEARCHED = ["entryUUID", "uid", "mail", "telephoneNumber", "mobile"]
Change = Literal["delete", "restrict", "lift"]


def _configure_tls(conn: LDAPObject, tls: TlsChecks) -> None:
    """libldap's `demand` checks the chain and the host name; the new context makes the
    options of this connection take effect."""
    required = ldap.OPT_X_TLS_DEMAND if tls.verify else ldap.OPT_X_TLS_NEVER
    conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, required)
    if tls.ca_file is not None:
        conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(tls.ca_file))
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)


def _search_subtree(
    conn: LDAPObject, base: str, query: str, attributes: list[str]
) -> list[tuple[str, Attributes]]:
    """(DN, attributes) of each entry found. A search reference (part of the subtree held by
    another server, a DN of None here) fails the search: followed, the bind would go wherever it
    names; skipped, an incomplete search would read as complete and an erasure as done."""
    found = []
    for dn, values in conn.search_ext_s(base, ldap.SCOPE_SUBTREE, query, attributes):
        if dn is None:
            raise LdapError("search reference: part of the subtree is on another server (not followed)")
        text = {name.lower(): [v.decode("utf-8", "replace") for v in vs] for name, vs in values.items()}
        found.append((dn, text))
    return found


def _exists(conn: LDAPObject, dn: str) -> bool:
    try:
        conn.search_ext_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
    except ldap.NO_SUCH_OBJECT:
        return False
    return True


def add_entry(conn: LDAPObject, dn: str, classes: Sequence[str], attributes: Mapping[str, str]) -> bool:
    """Add an entry unless one is there (False then)."""
    entry = [("objectClass", [c.encode() for c in classes])]
    entry += [(name, [value.encode()]) for name, value in attributes.items()]
    with _results():
        try:
            conn.add_s(dn, entry)
        except ldap.ALREADY_EXISTS:
            return False
    return True


def _add_ou(conn: LDAPObject, dn: Dn) -> None:
    """An organizationalUnit at `dn` (named ou=...), unless there is one."""
    add_entry(conn, str(dn), ["organizationalUnit"], {"ou": unescape(dn.rdns[0][0][1])})


__all__ = ["Directory", "Entry", "LdapError", "LdapSettings", "tls_for"]
