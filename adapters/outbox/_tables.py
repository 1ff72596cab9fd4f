"""Table and channel names, and the SQL shared by the outbox's parts."""

from __future__ import annotations

from typing import Any, Final

from ports.database import Database

__all__ = ["OUTBOX_TABLE", "INBOX_TABLE", "CHANNEL", "listens"]

OUTBOX_TABLE: Final = "hexinfra_outbox"
INBOX_TABLE: Final = "hexinfra_inbox"
CHANNEL: Final = "hexinfra_outbox"
"""The PostgreSQL NOTIFY channel a commit with outbox rows signals on."""


def listens(database: Database) -> bool:
    """Whether ``database`` can deliver notifications (``PostgresDatabase`` can:
    ``notifications(channel)``); the SQLite fake cannot, so the relay polls."""
    method: Any = getattr(database, "notifications", None)
    return callable(method)
