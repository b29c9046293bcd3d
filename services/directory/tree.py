"""Where the directory worker may act, and where a restricted entry goes and comes back to.

The worker acts only inside the subscriber subtrees (LETHE_LDAP_SUBJECT_BASES) and its own
restricted container, ou=restricted under the base DN: staff, service and admin entries
elsewhere that share a subject's uid or address are never found, so never erased or moved.

A restricted entry is moved to a container under ou=restricted whose name is its original
parent, relative to the base DN: uid=x,ou=emea,ou=partners,<base> goes to
uid=x,ou=ou\\=emea\\,ou\\=partners,ou=restricted,<base>. The record of where it came from
is then the entry's own DN, written by the same modifyDN that moves it: nothing can move it
without recording the origin (unlike a note written before or after the move, or a row in
the worker's database, which a crash between the two writes, or a lost database, would
leave out of step), it survives restarts and redeliveries, needs no schema change (the
directory's inetOrgPerson has no attribute of its own for it), and is plain to see for the
directory's administrators. Pure: no I/O here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.directory.dn import Dn, unescape

BASES_VARIABLE = "LETHE_LDAP_SUBJECT_BASES"


class PlacementError(RuntimeError):
    """An entry the worker may not change or cannot place; names no entry (DNs are personal)."""


@dataclass(frozen=True)
class Tree:
    base: Dn
    subject_bases: tuple[Dn, ...]

    @classmethod
    def configure(cls, base_dn: str, subject_bases: Sequence[str]) -> Tree:
        """Checks the settings; ValueError naming the variable at fault. No subject bases
        given: ou=people under the base DN."""
        try:
            base = Dn.parse(base_dn, lenient=True)
        except ValueError as e:
            raise ValueError(f"LETHE_LDAP_BASE_DN: {e}") from None
        restricted = base.child("ou", "restricted")
        chosen: list[Dn] = []
        for text in subject_bases or [str(base.child("ou", "people"))]:
            try:
                dn = Dn.parse(text, lenient=True)
            except ValueError as e:
                raise ValueError(f"{BASES_VARIABLE}: {text!r} is {e}") from None
            if not dn.below(base):
                raise ValueError(f"{BASES_VARIABLE}: {text!r} is not under LETHE_LDAP_BASE_DN ({base_dn!r})")
            if dn.within(restricted):
                raise ValueError(f"{BASES_VARIABLE}: {text!r} is inside the restricted container")
            if any(dn.within(other) or other.within(dn) for other in chosen):
                raise ValueError(f"{BASES_VARIABLE}: {text!r} overlaps another subject base")
            chosen.append(dn)
        return cls(base, tuple(chosen))

    @property
    def restricted(self) -> Dn:
        return self.base.child("ou", "restricted")

    @property
    def searched(self) -> tuple[Dn, ...]:
        """Every subtree a search for a subject's entries looks in."""
        return (*self.subject_bases, self.restricted)

    def in_scope(self, dn: Dn) -> bool:
        """An entry of a subscriber subtree."""
        return any(dn.below(b) for b in self.subject_bases)

    def is_restricted(self, dn: Dn) -> bool:
        return dn.below(self.restricted)

    def check_may_change(self, dn: Dn) -> None:
        """Every DN the worker changes came from a confined search; this says so again, in
        case a future path forgets."""
        if not (self.in_scope(dn) or self.is_restricted(dn)):
            raise PlacementError(f"an entry outside {BASES_VARIABLE} and the restricted container")

    def destination(self, dn: Dn, restrict: bool) -> Dn | None:
        """The parent to move the entry under; None if it is already where it belongs
        (a redelivered command, or another command got there first)."""
        self.check_may_change(dn)
        if restrict:
            return None if self.is_restricted(dn) else self.container_for(dn.parent)
        return self.origin(dn) if self.is_restricted(dn) else None

    def container_for(self, origin: Dn) -> Dn:
        return self.restricted.child("ou", str(origin.relative_to(self.base)))

    def origin(self, dn: Dn) -> Dn:
        """Where a restricted entry came from, read from its container's name."""
        container = dn.parent
        if container.key == self.restricted.key:
            # Moved by an earlier version, which kept no origin and lifted everything into
            # ou=people: the best there is. Refused below if ou=people is no subject base.
            origin = self.base.child("ou", "people")
        elif container.parent.key == self.restricted.key and _single_ou(container):
            try:
                origin = Dn.parse(unescape(container.rdns[0][0][1])).under(self.base)
            except ValueError:
                raise PlacementError("a restricted container whose name is not a DN") from None
        else:
            raise PlacementError("a restricted entry not placed as the worker places them")
        if not any(origin.within(b) for b in self.subject_bases):
            raise PlacementError(f"a restricted entry whose original parent is outside {BASES_VARIABLE}")
        return origin


def _single_ou(dn: Dn) -> bool:
    return len(dn.rdns[0]) == 1 and dn.rdns[0][0][0].lower() == "ou"


__all__ = ["BASES_VARIABLE", "PlacementError", "Tree"]
