"""The directory worker's settings: the server, the bind, the TLS checks, and the subtrees it
may act in."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.directory.tree import BASES_VARIABLE, Tree

log = logging.getLogger(__name__)


class LdapSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_LDAP_", extra="ignore")

    url: str = Field("ldap://127.0.0.1:389", description="LDAP server URL.")
    bind_dn: str = Field("cn=admin,dc=lethe,dc=test", description="DN the worker binds as.")
    password: SecretStr = Field(
        min_length=1,
        description="Password of the bind DN (an empty one would be an unauthenticated bind, which a"
        " directory may allow and then show nothing: an erasure that found no one).",
    )
    base_dn: str = Field("dc=lethe,dc=test", description="Suffix holding the directory.")
    subject_bases: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The subscriber subtrees, each under LETHE_LDAP_BASE_DN: one DN, or a JSON list"
        ' of DNs (["ou=people,dc=example,dc=com","ou=partners,dc=example,dc=com"]). Only these'
        " (and ou=restricted) are searched: a staff or service entry elsewhere with the same"
        " uid or address is never erased or moved. Unset: ou=people under LETHE_LDAP_BASE_DN.",
    )
    ca_file: Path | None = Field(
        None,
        description="CA certificate(s) that sign the directory's TLS certificate: required for ldaps://"
        " (a machine in the middle would otherwise get the bind password).",
    )

    @field_validator("url")
    @classmethod
    def _one_server(cls, value: str) -> str:
        """One ldap://, ldaps:// or ldapi:// URL. libldap takes a list and falls back along it:
        `ldaps://a ldap://b` would send the bind password in clear to b when a is away."""
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in ("ldap", "ldaps", "ldapi"):
            raise ValueError("LETHE_LDAP_URL: one ldap://, ldaps:// or ldapi:// URL expected")
        if not rest or any(c.isspace() or c == "," for c in value):
            raise ValueError("LETHE_LDAP_URL: one server only (no list, no spaces)")
        return value

    @field_validator("subject_bases", mode="before")
    @classmethod
    def _one_or_a_list(cls, value: Any) -> Any:
        """A DN holds commas, so a list is written as JSON, not comma-separated."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text.startswith("["):
            return [text] if text else []
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{BASES_VARIABLE}: not a JSON list ({e.msg})") from None
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise ValueError(f"{BASES_VARIABLE}: a JSON list of DNs (strings) expected")
        return parsed

    @model_validator(mode="after")
    def _check_tree(self) -> Self:
        self.tree()  # a malformed DN, or one outside the base DN, stops the worker at start-up
        return self

    def tree(self) -> Tree:
        return Tree.configure(self.base_dn, self.subject_bases)


@dataclass(frozen=True)
class TlsChecks:
    """How an ldaps:// connection checks the server: against `ca_file`, host name included
    (libldap's `demand`), or, on a development stack only, not at all."""

    verify: bool
    ca_file: Path | None = None


def tls_for(settings: LdapSettings, development: bool) -> TlsChecks | None:
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
        return TlsChecks(verify=False)
    if not settings.ca_file.is_file():
        raise ValueError(f"LETHE_LDAP_CA_FILE: no such file {settings.ca_file}")
    return TlsChecks(verify=True, ca_file=settings.ca_file)


__all__ = ["LdapSettings", "TlsChecks", "tls_for"]
