"""A throwaway OpenLDAP slapd from the OS packages, in a directory of its own."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import ldap

from cli.processes import spawn, wait_for_port
from services.directory.dn import Dn, unescape
from services.directory.ldap import add_entry

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")


def ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - slapd's {SSHA} scheme
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def slapd_binary() -> str:
    found = shutil.which("slapd") or ("/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None)
    if found is None:
        raise RuntimeError("slapd not found: apt-get install -y slapd ldap-utils (make does this)")
    return found


def start_slapd(
    workdir: Path,
    port: int,
    base_dn: str,
    admin_dn: str,
    password: str,
    log_dir: Path,
    nice: int = 0,
    tls: tuple[Path, Path, int] | None = None,
) -> subprocess.Popen[bytes]:
    """`tls`: a certificate, its key and a port for an ldaps:// listener beside the plain one."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    conf = workdir / "slapd.conf"
    conf.write_text(
        "\n".join(
            [
                *(
                    f"include {SCHEMA_DIR / s}"
                    for s in ("core.schema", "cosine.schema", "inetorgperson.schema")
                ),
                f"pidfile {workdir / 'slapd.pid'}",
                f"modulepath {MODULE_DIR}",
                "moduleload back_mdb",
                *([f"TLSCertificateFile {tls[0]}", f"TLSCertificateKeyFile {tls[1]}"] if tls else []),
                "database mdb",
                "maxsize 1073741824",
                f'suffix "{base_dn}"',
                f'rootdn "{admin_dn}"',
                f"rootpw {ssha(password)}",
                f"directory {data}",
                "index objectClass,uid,mail,entryUUID eq",
                "index telephoneNumber,mobile eq,subinitial,subfinal",  # a line, then an extension
                "",
            ]
        )
    )
    urls = f"ldap://127.0.0.1:{port}/" + (f" ldaps://127.0.0.1:{tls[2]}/" if tls else "")
    process = spawn(
        "slapd",
        [slapd_binary(), "-f", str(conf), "-h", urls, "-d", "0"],
        os.environ,
        log_dir,
        nice,
    )
    wait_for_port(port, "slapd", process)
    _ensure_suffix(port, base_dn, admin_dn, password)
    return process


def _ensure_suffix(port: int, base_dn: str, admin_dn: str, password: str) -> None:
    conn = ldap.initialize(f"ldap://127.0.0.1:{port}")
    try:
        conn.simple_bind_s(admin_dn, password)
        dc = unescape(Dn.parse(base_dn).rdns[0][0][1])
        add_entry(conn, base_dn, ["dcObject", "organization"], {"dc": dc, "o": "Lethe demo"})
    finally:
        conn.unbind_s()
