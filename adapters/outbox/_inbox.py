"""Inbox: a handler that runs once per (durable, event id), in one transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final, TypeAlias

from ports.clock import Clock, SystemClock
from ports.database import Database, Transaction
from ports.events import Event, Handler

from ._tables import INBOX_TABLE

__all__ = ["Inbox", "TransactionalHandler"]

TransactionalHandler: TypeAlias = Callable[[Event, Transaction], Awaitable[None]]
"""``fn(event, tx)``: handles ``event`` with its writes in ``tx``."""

_RECORD: Final = (
    f"INSERT INTO {INBOX_TABLE} (durable, event_id, processed_at) VALUES (%s, %s, %s) "
    "ON CONFLICT DO NOTHING"
)
_PRUNE: Final = f"DELETE FROM {INBOX_TABLE} WHERE processed_at < %s"
_SEEN: Final = f"SELECT count(*) FROM {INBOX_TABLE} WHERE durable = %s AND event_id = %s"


class Inbox:
    """Idempotent handlers: ``(durable, event.id)`` recorded in ``hexinfra_inbox``.

    ``idempotent(fn, durable=...)`` returns a :data:`ports.events.Handler` that opens
    a transaction, records ``(durable, event.id)`` (``INSERT ... ON CONFLICT DO
    NOTHING``) and, only when the row is new, runs ``fn(event, tx)``. ``fn``'s writes
    and the inbox row commit or roll back together: when ``fn`` raises, nothing is
    recorded and the subscriber redelivers; a redelivery of a handled event is acked
    without running ``fn``. On PostgreSQL a concurrent redelivery waits on the first
    one's row and then skips (or runs, if the first rolled back).

    Rows older than ``retention`` (default 7 days; keep it longer than the time a
    duplicate can still arrive: redeliveries, a republish after the broker's
    duplicate window) are deleted by :meth:`prune`, which the handler also runs
    after a commit at most once per ``prune_interval`` (default 1 hour).
    """

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock | None = None,
        retention: float = 7 * 24 * 3600.0,
        prune_interval: float = 3600.0,
    ) -> None:
        if retention <= 0 or prune_interval <= 0:
            raise ValueError("retention and prune_interval must be positive")
        self._db = database
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.retention = retention
        self.prune_interval = prune_interval
        self._pruned_at: float | None = None

    def idempotent(self, fn: TransactionalHandler, *, durable: str) -> Handler:
        """A Handler running ``fn(event, tx)`` once per ``(durable, event.id)``."""
        if not isinstance(durable, str) or not durable.strip():
            raise ValueError("durable must be a non-empty string")
        db, clock = self._db, self._clock

        async def handle(event: Event) -> None:
            async with db.transaction() as tx:
                recorded = await tx.execute(_RECORD, (durable, event.id, clock.now()))
                if recorded != 0:
                    await fn(event, tx)
            await self._maybe_prune()

        handle.__name__ = getattr(fn, "__name__", "handler")
        handle.__qualname__ = getattr(fn, "__qualname__", handle.__name__)
        return handle

    async def processed(self, durable: str, event_id: str) -> bool:
        """Whether ``durable`` has handled ``event_id`` (and the record is kept)."""
        return bool(await self._db.fetch_value(_SEEN, (durable, event_id)))

    async def prune(self) -> int:
        """Delete records older than ``retention``; returns how many."""
        self._pruned_at = self._clock.monotonic()
        cutoff = self._clock.now() - timedelta(seconds=self.retention)
        return await self._db.execute(_PRUNE, (cutoff,))

    async def _maybe_prune(self) -> None:
        now = self._clock.monotonic()
        if self._pruned_at is None or now - self._pruned_at >= self.prune_interval:
            await self.prune()

    def __repr__(self) -> str:
        return f"Inbox(retention={self.retention:g}s)"
