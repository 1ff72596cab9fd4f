"""Events, publishing side: domain code on the Publisher port, run on either adapter.

Run from the repository root: ``.venv/bin/python examples/publisher_example.py``.
Without ``NATS_URL`` it publishes to an :class:`adapters.memory.InMemoryEventBus`
(in process, nothing to install); with ``NATS_URL=nats://...`` set, to NATS JetStream
through :class:`adapters.nats_events.NatsPublisher` (stream ``EXAMPLES``, subjects
``examples.>``, unless ``EVENTS_STREAM`` / ``EVENTS_PREFIX`` say otherwise).

It shows: ``publish`` returning the broker's ack, the event id as the dedupe key
(publishing the same event again is acked ``duplicate=True`` and stored once), a
batch with ``publish_many``, and the request id travelling with the events.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.env_config import EnvConfig
from adapters.memory import InMemoryEventBus
from adapters.structlog_logger import configure_logging
from ports.context import bind_context
from ports.events import Event, Publisher

DEFAULTS = {
    "SERVICE_NAME": "publisher-example",
    "LOG_LEVEL": "warning",
    "EVENTS_STREAM": "EXAMPLES",
    "EVENTS_PREFIX": "examples",
    "EVENTS_DEAD_PREFIX": "examples-dead",
}


class Orders:
    """Domain code: it knows the Publisher port, not the broker."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def placed(self, order_id: str, total: float) -> Event:
        return Event(
            type="order.placed",
            source="orders-service",
            organization_id="org-42",
            id=f"order.placed:{order_id}",  # a business key: publishing twice is harmless
            data={"order_id": order_id, "total": total, "currency": "EUR"},
        )

    async def place(self, order_id: str, total: float) -> None:
        ack = await self.publisher.publish(self.placed(order_id, total))
        print(
            f"placed {order_id}: stored in {ack.stream} at #{ack.sequence}, "
            f"duplicate={ack.duplicate}"
        )


async def main() -> None:
    config = EnvConfig(env_file=None, defaults=DEFAULTS)
    log = configure_logging(config)
    publisher: Publisher
    if config.is_set("NATS_URL"):
        from adapters.nats_events import NatsConnection, NatsPublisher

        connection = NatsConnection.from_config(config, logger=log)
        await connection.connect()
        publisher = NatsPublisher(connection)
        close = connection.close
    else:
        bus = InMemoryEventBus.from_config(config, logger=log)
        publisher = bus
        close = bus.close
    print(f"publishing with {type(publisher).__name__}")
    orders = Orders(publisher)
    try:
        with bind_context(request_id="req-example-1"):  # what an HTTP middleware would do
            await orders.place("A-1001", 99.5)
            await orders.place("A-1001", 99.5)  # a retry by the caller: deduplicated
            acks = await publisher.publish_many(
                [orders.placed(f"B-{n}", 10.0 * n) for n in range(1, 4)]
            )
            print(f"batch of {len(acks)} acked in order: {[a.sequence for a in acks]}")
        if isinstance(publisher, InMemoryEventBus):
            print(f"stored events: {[e.data['order_id'] for e in publisher.published]}")
    finally:
        await close()


if __name__ == "__main__":
    asyncio.run(main())
