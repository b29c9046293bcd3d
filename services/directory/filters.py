"""The LDAP filters the directory worker searches with. Pure: no I/O here."""

from __future__ import annotations

from collections.abc import Sequence

from ldap.filter import escape_filter_chars

from shared.identity import Identities, extension, mailbox, national_digits

# A Gmail name this long is searched with dots anywhere in it too (`a*l*i*c*e*h*a*r*t*l*e*y@`):
# anchored at both ends, a long name matches few others; a short one, with anything after it,
# had matched half of a 20,000-entry directory. A shorter name is searched in each of its
# spellings with single dots instead: at most 2**4 names for five letters.
SPREAD_MIN = 6


def subject_filter(ids: Identities) -> str | None:
    """Entries with any of the uids, addresses (or another sub-address of the same mailbox,
    for a person to decide on) or numbers, in each spelling a directory may hold."""
    terms = [f"(uid={escape_filter_chars(u)})" for u in ids.ldap_uids]
    for email in ids.emails:
        local, _, domain = mailbox(email).rpartition("@")
        terms.append(f"(mail={escape_filter_chars(email)})")
        name, _, host = email.rpartition("@")
        terms += _written_around(escape_filter_chars(name), escape_filter_chars(host))
        if domain == "gmail.com":
            terms += _gmail_terms(email, local)
            continue
        # The mailbox, and its other sub-addresses.
        terms.append(f"(mail={escape_filter_chars(local)}+*@{escape_filter_chars(domain)})")
        if f"{local}@{domain}" != email:
            terms.append(f"(mail={escape_filter_chars(f'{local}@{domain}')})")
    for attribute in ("telephoneNumber", "mobile"):
        terms += [f"({attribute}={v})" for v in _number_values(ids.phones)]
    if not terms:
        return None
    return f"(&(objectClass=inetOrgPerson)(|{''.join(dict.fromkeys(terms))}))"


def _gmail_terms(email: str, name: str) -> list[str]:
    """Gmail ignores dots and answers under either domain. LDAP cannot ignore the dots, and a
    filter with anything between the letters of a short name matched half of a large
    directory, past its size limit: a short name in each of its spellings, a long one with
    anything between its letters; as given too, alone or with a tag, under each domain
    (a.lice@googlemail.com, al.ice+news@gmail.com, a.l.i.c.e@gmail.com); and written around as
    given, without dots and (a long one) with dots anywhere. `name`: the mailbox's."""
    given = escape_filter_chars(email.rpartition("@")[0].split("+", 1)[0])
    plain = escape_filter_chars(name)
    if len(name) >= SPREAD_MIN:
        spread = "*".join(escape_filter_chars(c) for c in name)
        spellings = around = {given, plain, spread}
    else:
        spellings, around = {given, *(escape_filter_chars(n) for n in dotted(name))}, {given, plain}
    terms = []
    for host in ("gmail.com", "googlemail.com"):
        terms += [t for n in sorted(spellings) for t in (f"(mail={n}@{host})", f"(mail={n}+*@{host})")]
        terms += [t for n in sorted(around) for t in _written_around(n, host)]
    return terms


def _written_around(name: str, domain: str) -> list[str]:
    """Terms for an address with something written around it, as the normalisation reads it
    (shared/identity.py): a display form (`Alice Hartley <alice@x>`), `mailto:`, a comment or
    a trailing dot after it, a list it is in (after `,`, `;` or `/`), quotes around its name.
    `name` and `domain` are filter text (escaped; a Gmail name's `*` between its letters). Each
    term is anchored at a mark before the address or at the value's start: `*taylor@x*` would
    find every `p.taylor@x` too, past a directory's size limit, and so would a term with a
    space before the address, which slapd drops."""
    value = f"{name}@{domain}"
    around = [f"{value}*", f"*<{value}>*", f'"{name}"@{domain}*']
    around += [f"*{mark}{space}{value}*" for mark in ",;:/" for space in ("", " ")]
    return [f"(mail={term})" for term in around]


def dotted(name: str) -> list[str]:
    """Each spelling of a name with at most one dot between two letters (`joe`, `j.oe`, `jo.e`,
    `j.o.e`): how people write a short Gmail name that Gmail reads without its dots."""
    spellings = [name[:1]]
    for c in name[1:]:
        spellings = [s + sep + c for s in spellings for sep in ("", ".")]
    return spellings


def uuid_filter(entry_uuids: Sequence[str]) -> str:
    return "(|" + "".join(f"(entryUUID={escape_filter_chars(u)})" for u in entry_uuids) + ")"


def _number_values(phones: Sequence[str]) -> list[str]:
    """Filter values for entries holding one of these numbers, however a directory spells its
    line: its national digits with anything between and before them (`+44 (0)7700 900461`,
    `(07700) 900461`, `07700.900.461`: LDAP's telephoneNumber matching ignores spaces and
    hyphens only), ending with the line's last digit (so also the main number of an
    extension's switchboard, which matching.py puts to a person); for a number with an
    extension, the line followed by anything that ends in the extension's digits (`x12`,
    `ext. 012`). The normalised forms decide. Not the line followed by anything: that is every
    entry of a switchboard, past a directory's size limit."""
    values: set[str] = set()
    for phone in phones:
        digits = extension(phone).lstrip("0") or extension(phone)
        # Anything between any two digits: `01632.96.01.23`, `+33 6.12.34.56.78` split the last
        # ones too. Unindexed, as any filter that starts with `*` is.
        value = "*" + "*".join(national_digits(phone))
        values.add(value)
        if digits:
            values.add(f"{value}*{escape_filter_chars(digits)}")
    return sorted(values)
