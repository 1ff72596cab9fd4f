"""NatsPublisher: the Publisher port on a NatsConnection."""

from __future__ import annotations

from collections.abc import Sequence

from adapters import event_codec
from adapters._event_rules import check_publish_subject
from adapters._trace_carrier import OUTGOING
from adapters.nats_events.connection import NatsConnection
from ports.context import request_id
from ports.events import Event, PublishAck

__all__ = ["NatsPublisher"]


class NatsPublisher:
    """:class:`ports.events.Publisher` on JetStream (see the module docstring)."""

    def __init__(self, connection: NatsConnection) -> None:
        self._connection = connection
        self._prefix = connection.settings.prefix + "."

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        """Publish ``event`` and return once JetStream stored it (or deduped it).
        ``BadRequest`` naming both sizes, before anything is sent, when its headers and
        body exceed the server's max payload (measured by the connection)."""
        if not isinstance(event, Event):
            raise TypeError("publish takes an Event")
        wire = self._prefix + check_publish_subject(event.type if subject is None else subject)
        body, headers = event_codec.encode(event, request_id=request_id(), trace=OUTGOING.get())
        return await self._connection.publish_message(wire, body, headers)

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        """Publish ``events`` pipelined; their acks, in order. Every event is encoded
        and measured before any is sent: one too big -> ``BadRequest``, none sent."""
        rid = request_id()
        trace = OUTGOING.get()
        messages = []
        for event in events:
            if not isinstance(event, Event):
                raise TypeError("publish_many takes Events")
            wire = self._prefix + check_publish_subject(event.type if subject is None else subject)
            body, headers = event_codec.encode(event, request_id=rid, trace=trace)
            messages.append((wire, body, headers))
        if not messages:
            return []
        return await self._connection.publish_messages(messages)
