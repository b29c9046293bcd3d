"""What an erasure of each demo subject does, per system: (records found, erased, retained),
without holds. The end-to-end test checks it on the running stack; the any-day check
(`tests/integration/test_demo_any_day.py`) checks that it holds whatever day the demo loads."""

from __future__ import annotations

DEMO_ERASURE: dict[str, dict[str, tuple[int, int, int]]] = {
    "alice": {
        "billing": (11, 5, 6),
        "crm": (5, 4, 1),
        "recordings": (2, 2, 0),
        "mailing": (3, 3, 0),
    },
}
