"""Processed-message journal: the consumer side of exactly-once effects.

A handler claims the message id in the same transaction as its change; a redelivered message
finds its id taken and changes nothing.
"""

from __future__ import annotations

JOURNAL_DDL = """
CREATE TABLE IF NOT EXISTS processed_messages (
    message_id uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
)"""


def claimed(param: int) -> str:
    """A CTE `claimed` of the ids in array parameter `param` that were not processed before,
    for a handler that claims them in the statement that starts its change (a concurrent
    claimer of the same id waits on the row lock, then finds it processed)."""
    return (
        f"claimed AS (INSERT INTO processed_messages (message_id) SELECT unnest(${param}::uuid[])"
        " ON CONFLICT (message_id) DO NOTHING RETURNING message_id)"
    )
