"""SqlOutbox: the Outbox port as rows in ``hexinfra_outbox``, in the caller's tx."""

from __future__ import annotations

import json
from typing import Final

from adapters import _trace_carrier
from adapters._event_rules import check_publish_subject
from ports.clock import Clock, SystemClock
from ports.context import request_id
from ports.database import Database, Transaction
from ports.events import Event

from ._tables import CHANNEL, OUTBOX_TABLE, listens

__all__ = ["SqlOutbox"]

_INSERT: Final = (
    f"INSERT INTO {OUTBOX_TABLE} (event_id, event_type, source, organization_id, "
    "occurred_at, data, subject, request_id, created_at, traceparent, tracestate) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_NOTIFY: Final = "SELECT pg_notify(%s, '')"


def dump_data(event: Event) -> str:
    """The event's data as JSON text (ASCII: lone surrogates and NUL survive a TEXT
    column of either engine)."""
    return json.dumps(event.data, separators=(",", ":"), ensure_ascii=True)


class SqlOutbox:
    """:class:`ports.outbox.Outbox` on any :class:`~ports.database.Database` adapter.

    ``add`` inserts one row into ``hexinfra_outbox`` with ``tx`` (created by
    :func:`adapters.outbox.install`). On PostgreSQL it also issues
    ``pg_notify('hexinfra_outbox', '')`` in ``tx``, which the server delivers at
    commit (and drops on rollback): a listening :class:`OutboxRelay` wakes at once.

    With telemetry on, the row also holds the current span's W3C trace context
    (``traceparent``, ``tracestate``: :func:`adapters._trace_carrier.current`), which
    the relay's send span continues (ADR 0031); ``NULL`` outside a span.
    """

    def __init__(self, database: Database, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._notify = listens(database)

    async def add(self, tx: Transaction, event: Event, *, subject: str | None = None) -> None:
        """Record ``event`` in ``tx``; published by the relay once ``tx`` commits."""
        if not isinstance(event, Event):
            raise TypeError("Outbox.add takes an Event")
        check_publish_subject(event.type if subject is None else subject)
        carrier = _trace_carrier.current()
        traceparent, tracestate = carrier if carrier is not None else (None, None)
        await tx.execute(
            _INSERT,
            (
                event.id,
                event.type,
                event.source,
                event.organization_id,
                event.timestamp,
                dump_data(event),
                subject,
                request_id(),
                self._clock.now(),
                traceparent,
                tracestate,
            ),
        )
        if self._notify:
            await tx.execute(_NOTIFY, (CHANNEL,))

    def __repr__(self) -> str:
        return f"SqlOutbox(notify={self._notify})"
