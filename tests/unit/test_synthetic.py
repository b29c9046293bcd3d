from cli.synthetic import people
from shared.identity import normalise_phone

PREFIXES = ("kill", "pause", "pgrestart", "ldapdown", "poison", "twice", "bench", "soak", "syn")


def test_synthetic_people_share_no_identifier_across_batches() -> None:
    """Identity matching would otherwise erase one batch's person in another's request."""
    seen: set[str] = set()
    for prefix in PREFIXES:
        for p in people(50, prefix=prefix).people:
            assert p.subject is not None
            ids = {normalise_phone(p.subject.phones[0]), p.subject.emails[0], p.subject.customer_id or ""}
            assert not ids & seen, (prefix, ids & seen)
            seen |= ids
