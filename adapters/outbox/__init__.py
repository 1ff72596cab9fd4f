"""Transactional outbox and idempotent inbox on the Database and events ports.

- :class:`SqlOutbox` (:class:`ports.outbox.Outbox`): ``await outbox.add(tx, event)``
  writes the event into ``hexinfra_outbox`` in the caller's transaction; it is
  published only if that transaction commits.
- :class:`OutboxRelay`: publishes committed rows (``Nats-Msg-Id`` = event id),
  marks them sent, prunes them; LISTEN/NOTIFY wake-up on PostgreSQL, polling
  everywhere; several relays at once publish each row once into the stream.
- :class:`Inbox`: ``inbox.idempotent(fn, durable=...)`` runs ``fn(event, tx)`` once
  per ``(durable, event.id)``, its writes and the record in one transaction.
- :func:`install`: creates both tables (the library's migrations, namespace
  ``hexinfra``).

The same code runs on :class:`adapters.postgres.PostgresDatabase` and on
:class:`adapters.memory.SqliteDatabase` with the in-memory bus (ADR 0030).
"""

from ._inbox import Inbox, TransactionalHandler
from ._install import NAMESPACE, install
from ._outbox import SqlOutbox
from ._relay import OutboxRelay
from ._tables import CHANNEL, INBOX_TABLE, OUTBOX_TABLE

__all__ = [
    "SqlOutbox",
    "OutboxRelay",
    "Inbox",
    "TransactionalHandler",
    "install",
    "NAMESPACE",
    "CHANNEL",
    "OUTBOX_TABLE",
    "INBOX_TABLE",
]
