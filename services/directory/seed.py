"""The directory's section of the seed file: inetOrgPerson entries under ou=people."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ldap3.utils.dn import escape_rdn
from pydantic import Field

from services.directory.ldap import Directory, add_entry
from shared.seeding import SeedModel


class DirectoryEntrySeed(SeedModel):
    uid: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    cn: str
    sn: str
    mail: str | None = None
    telephone_number: str | None = None
    mobile: str | None = None
    organisation: str | None = None


def _write(directory: Directory, entries: Sequence[DirectoryEntrySeed]) -> int:
    directory.ensure_tree()
    with directory.session() as conn:
        for e in entries:
            attrs: dict[str, str] = {"uid": e.uid, "cn": e.cn, "sn": e.sn}
            optional = {
                "mail": e.mail,
                "telephoneNumber": e.telephone_number,
                "mobile": e.mobile,
                "o": e.organisation,
            }
            attrs.update({k: v for k, v in optional.items() if v})
            add_entry(conn, f"uid={escape_rdn(e.uid)},{directory.people}", ["inetOrgPerson"], attrs)
    return len(entries)


async def write(directory: Directory, entries: Sequence[DirectoryEntrySeed]) -> int:
    return await asyncio.to_thread(_write, directory, entries)
