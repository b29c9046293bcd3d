"""Distinguished names as the directory worker compares and builds them, on ldap3's RFC 4514
parser (ldap3.utils.dn). Never by splitting on commas: an escaped comma or plus sign in a
value (cn=Hartley\\, Alice) would cut one RDN in two and name the wrong parent."""

from __future__ import annotations

from dataclasses import dataclass

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import escape_rdn, parse_dn

Ava = tuple[str, str]  # (attribute type, value as written: escapes kept, so str() is a valid DN)
_HEX = "0123456789abcdefABCDEF"


def unescape(value: str) -> str:
    """An RDN value as the directory compares it: `\\,` and `\\2C` are the same comma (slapd
    answers with hex escapes, people write the other kind)."""
    raw = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "\\" and _is_hex(value[i + 1 : i + 3]):
            raw.append(int(value[i + 1 : i + 3], 16))
            i += 3
        elif value[i] == "\\" and i + 1 < len(value):
            raw += value[i + 1].encode()
            i += 2
        else:
            raw += value[i].encode()
            i += 1
    return raw.decode("utf-8", errors="replace")


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in _HEX for c in pair)


@dataclass(frozen=True)
class Dn:
    rdns: tuple[tuple[Ava, ...], ...]  # the entry's own RDN first, the suffix last

    @classmethod
    def parse(cls, text: str, lenient: bool = False) -> Dn:
        """ValueError for anything that is not a DN. `lenient` allows spaces around the
        separators ("ou=people, dc=example"), as people write DNs in settings; a server's
        answer is parsed strictly, where an escaped trailing space is part of a value."""
        try:
            components = parse_dn(text, strip=lenient)
        except LDAPInvalidDnError as e:
            raise ValueError(f"not a distinguished name ({e})") from None
        rdns: list[tuple[Ava, ...]] = []
        current: list[Ava] = []
        for attribute, value, separator in components:
            current.append((attribute, value))
            if separator != "+":  # a multi-valued RDN (cn=x+uid=y) is one RDN
                rdns.append(tuple(current))
                current = []
        if current:
            raise ValueError("not a distinguished name (ends with '+')")
        return cls(tuple(rdns))

    def __str__(self) -> str:
        return ",".join("+".join(f"{a}={v}" for a, v in rdn) for rdn in self.rdns)

    def __len__(self) -> int:
        return len(self.rdns)

    @property
    def key(self) -> tuple[tuple[Ava, ...], ...]:
        """For comparison: attribute types and the naming attributes here (uid, cn, ou, dc, o)
        match without regard to case; the AVAs of a multi-valued RDN in any order."""
        return tuple(tuple(sorted((a.lower(), unescape(v).lower()) for a, v in rdn)) for rdn in self.rdns)

    @property
    def rdn(self) -> str:
        return "+".join(f"{a}={v}" for a, v in self.rdns[0])

    @property
    def parent(self) -> Dn:
        return Dn(self.rdns[1:])

    def child(self, attribute: str, value: str) -> Dn:
        """The entry named attribute=value under this one; `value` is raw, escaped here."""
        return Dn((((attribute, escape_rdn(value)),), *self.rdns))

    def below(self, other: Dn) -> bool:
        """Strictly inside `other`'s subtree."""
        return len(self) > len(other) and self.key[len(self) - len(other) :] == other.key

    def within(self, other: Dn) -> bool:
        """`other` itself or inside its subtree."""
        return self.key == other.key or self.below(other)

    def relative_to(self, base: Dn) -> Dn:
        assert self.below(base)
        return Dn(self.rdns[: len(self) - len(base)])

    def under(self, base: Dn) -> Dn:
        """This (relative) DN placed under `base`."""
        return Dn(self.rdns + base.rdns)


__all__ = ["Dn", "unescape"]
