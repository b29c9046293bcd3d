"""The LDAP filters the directory worker searches with. Pure: no I/O here."""

from __future__ import annotations

from collections.abc import Sequence

from ldap.filter import escape_filter_chars

from shared.identity import Identities, extension, mailbox, phone_variants


def subject_filter(ids: Identities) -> str | None:
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


def uuid_filter(entry_uuids: Sequence[str]) -> str:
    return "(|" + "".join(f"(entryUUID={escape_filter_chars(u)})" for u in entry_uuids) + ")"


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
