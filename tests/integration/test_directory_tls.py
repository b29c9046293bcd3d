"""The directory worker over ldaps://: the server's certificate is checked against the CA
file, host name included, and a directory whose certificate another CA signed is refused
before the bind password is sent."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import pytest

from cli.processes import free_port, stop
from cli.slapd import start_slapd
from services.directory.ldap import Directory, LdapError, LdapSettings
from shared.identity import Identities
from tests.certs import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration


@contextmanager
def slapd_over_tls(
    workdir: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> Iterator[tuple[LdapSettings, TlsFiles]]:
    """A throwaway slapd with an ldaps:// listener whose certificate names `hosts`, and the
    settings that reach it there, checking against its CA."""
    files = make_tls_files(workdir / "tls", "slapd", hosts=hosts)
    plain, secure = free_port(), free_port()
    base, admin, password = "dc=lethe,dc=test", "cn=admin,dc=lethe,dc=test", uuid4().hex
    process = start_slapd(
        workdir, plain, base, admin, password, workdir / "logs", tls=(files.cert, files.key, secure)
    )
    try:
        yield (
            LdapSettings(
                url=f"ldaps://127.0.0.1:{secure}",
                bind_dn=admin,
                password=password,  # type: ignore[arg-type]
                base_dn=base,
                ca_file=files.ca,
            ),
            files,
        )
    finally:
        stop(process)


@pytest.fixture(scope="module")
def tls_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LdapSettings, TlsFiles]]:
    with slapd_over_tls(tmp_path_factory.mktemp("slapd-tls")) as running:
        yield running


def test_a_directory_whose_certificate_the_ca_signed_is_searched(
    tls_slapd: tuple[LdapSettings, TlsFiles],
) -> None:
    settings, _ = tls_slapd
    directory = Directory(settings)
    directory.ensure_tree()
    person = {"uid": "tls-ada", "cn": "Ada", "sn": "Ada"}
    directory.add(f"uid=tls-ada,{directory.people}", ["inetOrgPerson"], person)
    found = asyncio.run(directory.find(Identities(ldap_uids=["tls-ada"])))
    assert [e.uid for e in found] == [["tls-ada"]]


def test_a_certificate_from_another_ca_is_refused(
    tls_slapd: tuple[LdapSettings, TlsFiles], tmp_path: Path
) -> None:
    settings, _ = tls_slapd
    stranger = make_tls_files(tmp_path, "stranger")
    with pytest.raises(LdapError, match="SERVER_DOWN"):
        Directory(settings.model_copy(update={"ca_file": stranger.ca})).connect()


def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    """Signed by the CA the worker trusts, but for directory.example: the worker asked for
    127.0.0.1, so a machine in the middle holding any certificate of that CA gets nowhere."""
    with slapd_over_tls(tmp_path, hosts=("directory.example",)) as (settings, _):
        with pytest.raises(LdapError, match="SERVER_DOWN"):
            Directory(settings).connect()
        # Without checks (a development stack only) the same server answers: it was the name.
        lax = Directory(settings.model_copy(update={"ca_file": None}), development=True)
        lax.connect().unbind_s()


async def test_a_server_that_never_answers_the_handshake_fails_the_call_at_its_deadline(
    tmp_path: Path,
) -> None:
    """libldap's timeouts do not cover an ldaps:// handshake: a listener that accepts and says
    nothing held the call (and its thread) for good. The call fails at its deadline, and the
    next one is not queued behind it."""
    files = make_tls_files(tmp_path, "silent")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        settings = LdapSettings(
            url=f"ldaps://127.0.0.1:{port}",
            password="p",  # type: ignore[arg-type]
            ca_file=files.ca,
        )
        directory = Directory(settings, call_timeout_s=1.0)
        try:
            started = time.monotonic()
            for _ in range(2):
                with pytest.raises(TimeoutError):
                    await directory.find(Identities(ldap_uids=["anyone"]))
            assert time.monotonic() - started < 5
        finally:
            directory.close()
