"""Outbox: publish an event if, and only if, the caller's transaction commits."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ports.database import Transaction
from ports.events import Event

__all__ = ["Outbox"]


@runtime_checkable
class Outbox(Protocol):
    """Events written in the caller's transaction, published after it commits.

    Contract:

    - ``add`` writes ``event`` (and ``subject``, default ``event.type``, and the
      current ``request_id``) **inside** ``tx``: when ``tx`` rolls back, the event is
      never published; when it commits, a relay publishes it (at least once, with
      ``event.id`` as the broker's dedupe key, so the stream holds it once).
    - It talks to the database only (never to the broker), so a broker outage
      neither fails nor slows the transaction.
    - An invalid subject raises :class:`domain_errors.BadRequest` before anything
      is written.
    """

    async def add(self, tx: Transaction, event: Event, *, subject: str | None = None) -> None:
        """Record ``event`` in ``tx``, to be published once ``tx`` commits."""
        ...
