"""The LDAP side of the directory worker. ldap3 is synchronous, so every call runs in a worker
thread with a connection of its own (ldap3 connections are not thread-safe)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldap3 import SUBTREE, Connection, Server, Tls
from ldap3.utils.conv import escape_filter_chars
from opentelemetry.trace import Span, SpanKind
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.identity import Identities, mailbox, phone_variants
from shared.telemetry.messaging import TRACER

log = logging.getLogger(__name__)
NO_SUCH_OBJECT = 32
ALREADY_EXISTS = 68


class LdapSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_LDAP_", extra="ignore")

    url: str = Field("ldap://127.0.0.1:389", description="LDAP server URL.")
    bind_dn: str = Field("cn=admin,dc=lethe,dc=test", description="DN the worker binds as.")
    password: SecretStr = Field(description="Password of the bind DN.")
    base_dn: str = Field("dc=lethe,dc=test", description="Suffix holding the directory.")
    ca_file: Path | None = Field(
        None,
        description="CA certificate(s) that sign the directory's TLS certificate: required for ldaps://"
        " (a machine in the middle would otherwise get the bind password).",
    )


def tls_for(settings: LdapSettings, development: bool) -> Tls | None:
    """Certificate checks for ldaps://: verified against the CA file, the host name included.
    Without a CA file ldaps:// is refused, except on a development stack (said loudly)."""
    if not settings.url.lower().startswith("ldaps://"):
        return None
    if settings.ca_file is None:
        if not development:
            raise ValueError(
                "LETHE_LDAP_CA_FILE: required for ldaps:// (the server's certificate must be checked)"
            )
        log.warning("ldaps:// without certificate checks: allowed only because LETHE_DEVELOPMENT is set")
        return Tls(validate=ssl.CERT_NONE)
    if not settings.ca_file.is_file():
        raise ValueError(f"LETHE_LDAP_CA_FILE: no such file {settings.ca_file}")
    return Tls(
        validate=ssl.CERT_REQUIRED, ca_certs_file=str(settings.ca_file), version=ssl.PROTOCOL_TLS_CLIENT
    )


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
        self.people = f"ou=people,{settings.base_dn}"
        self.restricted = f"ou=restricted,{settings.base_dn}"
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
            terms.append(f"(mail={escape_filter_chars(local)}+*@{escape_filter_chars(domain)})")
            if mailbox(email) != email:
                terms.append(f"(mail={escape_filter_chars(mailbox(email))})")
        terms += [
            f"(telephoneNumber={escape_filter_chars(v)})" for p in ids.phones for v in phone_variants(p)
        ]
        terms += [f"(mobile={escape_filter_chars(v)})" for p in ids.phones for v in phone_variants(p)]
        if not terms:
            return None
        return f"(&(objectClass=inetOrgPerson)(|{''.join(terms)}))"

    async def find(self, ids: Identities) -> list[Entry]:
        query = self.subject_filter(ids)
        return [] if query is None else await asyncio.to_thread(self._search, query)

    def _search(self, query: str) -> list[Entry]:
        with _span("search") as span, self.bound() as conn:
            conn.search(self.settings.base_dn, query, SUBTREE, attributes=SEARCHED)
            span.set_attribute("lethe.ldap.entries", len(conn.entries))
            return [
                Entry(
                    str(e.entryUUID.value),
                    e.entry_dn,
                    uid=_values(e, "uid"),
                    mail=_values(e, "mail"),
                    phones=_values(e, "telephoneNumber") + _values(e, "mobile"),
                )
                for e in conn.entries
            ]

    async def lookup(self, text: str) -> list[str]:
        """The directory's normal lookup (phone book search by name): only ou=people, so
        restricted entries, moved to ou=restricted, are out of normal processing."""
        value = escape_filter_chars(text)
        query = f"(&(objectClass=inetOrgPerson)(|(cn=*{value}*)(sn=*{value}*)))"

        def search() -> list[str]:
            with self.connect() as conn:
                conn.search(self.people, query, SUBTREE, attributes=["uid"])
                return sorted(str(e.uid.value) for e in conn.entries)

        return await asyncio.to_thread(search)

    async def existing(self, entry_uuids: Sequence[str]) -> set[str]:
        if not entry_uuids:
            return set()
        return {e.entry_uuid for e in await asyncio.to_thread(self._search, _uuid_filter(entry_uuids))}

    def ensure_tree(self) -> None:
        with self.connect() as conn:
            for ou in (self.people, self.restricted):
                conn.add(ou, ["organizationalUnit"], {"ou": ou.split(",")[0][3:]})
                if conn.result["result"] not in (0, ALREADY_EXISTS):
                    raise LdapError(f"LDAP result {conn.result['result']}")

    async def delete(self, entry_uuids: Sequence[str], known: Mapping[str, str] | None = None) -> None:
        await asyncio.to_thread(self._apply, entry_uuids, None, known or {})

    async def move(
        self, entry_uuids: Sequence[str], restricted: bool, known: Mapping[str, str] | None = None
    ) -> None:
        parent = self.restricted if restricted else self.people
        await asyncio.to_thread(self._apply, entry_uuids, parent, known or {})

    def _apply(self, entry_uuids: Sequence[str], new_parent: str | None, known: Mapping[str, str]) -> None:
        """Delete (new_parent None) or move each entry; an entry already gone counts as done.
        `known` maps entryUUIDs to the DNs a search of this command just returned: those are
        changed directly, saving a search per command; one that has moved since is searched."""
        if not entry_uuids:
            return
        with _span("delete" if new_parent is None else "modify_dn") as span, self.bound() as conn:
            span.set_attribute("lethe.ldap.entries", len(entry_uuids))
            unlocated = [u for u in entry_uuids if u not in known]
            for uuid in entry_uuids:
                if uuid in known and not _change(conn, known[uuid], new_parent):
                    unlocated.append(uuid)
            if not unlocated:
                return
            conn.search(self.settings.base_dn, _uuid_filter(unlocated), SUBTREE, attributes=["entryUUID"])
            for dn in [entry.entry_dn for entry in conn.entries]:
                _change(conn, dn, new_parent)


SEARCHED = ["entryUUID", "uid", "mail", "telephoneNumber", "mobile"]


def _values(entry: Any, attribute: str) -> list[str]:
    return [str(v) for v in entry[attribute].values] if attribute in entry.entry_attributes else []


def _uuid_filter(entry_uuids: Sequence[str]) -> str:
    return "(|" + "".join(f"(entryUUID={escape_filter_chars(u)})" for u in entry_uuids) + ")"


def _change(conn: Connection, dn: str, new_parent: str | None) -> bool:
    """Delete or move one entry; False if there is no entry at that DN."""
    if new_parent is None:
        conn.delete(dn)
    elif dn.split(",", 1)[1].lower() == new_parent.lower():
        return True
    else:
        conn.modify_dn(dn, dn.split(",", 1)[0], new_superior=new_parent)
    if conn.result["result"] == NO_SUCH_OBJECT:
        return False
    if conn.result["result"] != 0:
        raise LdapError(f"LDAP result {conn.result['result']}")
    return True


__all__ = ["Directory", "Entry", "LdapError", "LdapSettings"]
