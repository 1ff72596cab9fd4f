"""Events, consuming side: a handler on the Subscriber port, run on either adapter.

Run from the repository root: ``.venv/bin/python examples/subscriber_example.py``.
Without ``NATS_URL`` it runs on an :class:`adapters.memory.InMemoryEventBus`; with
``NATS_URL=nats://...`` set, on a durable pull consumer of NATS JetStream (stream
``EXAMPLES`` unless ``EVENTS_STREAM`` says otherwise). It publishes three events
itself, so it has something to consume, and stops once it has dealt with them.

It shows: the handler's request context (request id, event id, attempt), a handler
that fails once and gets the event again after the backoff, and an event the
handler rejects, which lands in the dead letters instead of being retried.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.env_config import EnvConfig
from adapters.memory import InMemoryEventBus
from adapters.structlog_logger import configure_logging
from ports.context import bind_context, current_context
from ports.events import DeadLetter, Event, Publisher, Reject, Subscriber

DEFAULTS = {
    "SERVICE_NAME": "subscriber-example",
    "LOG_LEVEL": "error",
    "EVENTS_STREAM": "EXAMPLES",
    "EVENTS_PREFIX": "examples",
    "EVENTS_DEAD_PREFIX": "examples-dead",
}


class Shipping:
    """Domain code: reacts to orders; idempotent by event id, as handlers must be."""

    def __init__(self) -> None:
        self.shipped: dict[str, str] = {}
        self.seen: set[str] = set()

    async def on_order_placed(self, event: Event) -> None:
        context = current_context()
        print(
            f"  handling {event.data['order_id']} attempt {context['attempt']} "
            f"(request {context.get('request_id')})"
        )
        self.seen.add(event.id)
        if event.data["total"] <= 0:
            raise Reject("an order without a total cannot ship")
        if event.data.get("flaky") and context["attempt"] == 1:
            raise RuntimeError("carrier API timed out")  # redelivered after the backoff
        self.shipped.setdefault(event.id, event.data["order_id"])


async def main() -> None:
    config = EnvConfig(env_file=None, defaults=DEFAULTS)
    log = configure_logging(config)
    publisher: Publisher
    subscriber: Subscriber
    if config.is_set("NATS_URL"):
        from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber

        connection = NatsConnection.from_config(config, logger=log)
        await connection.connect()
        publisher, nats_subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        subscriber = nats_subscriber

        async def dead_letters() -> list[DeadLetter]:
            return await nats_subscriber.dead_letters()

        close = connection.close
    else:
        bus = InMemoryEventBus.from_config(config, logger=log)
        publisher = subscriber = bus

        async def dead_letters() -> list[DeadLetter]:
            return list(bus.dead_letters)

        close = bus.close
    print(f"consuming with {type(subscriber).__name__}")
    shipping = Shipping()
    run = uuid.uuid4().hex[:6]
    events = [
        Event(
            type="order.placed",
            source="orders",
            organization_id="org-42",
            data={"order_id": f"{run}-1", "total": 20.0},
        ),
        Event(
            type="order.placed",
            source="orders",
            organization_id="org-42",
            data={"order_id": f"{run}-2", "total": 35.0, "flaky": True},
        ),
        Event(
            type="order.placed",
            source="orders",
            organization_id="org-42",
            data={"order_id": f"{run}-3", "total": 0.0},
        ),
    ]
    subscription = await subscriber.subscribe(
        "order.*", shipping.on_order_placed, durable="shipping-example", backoff=(0.2,)
    )
    try:
        with bind_context(request_id=f"req-{run}"):
            await publisher.publish_many(events)
        ours = {e.id for e in events}
        deadline = time.monotonic() + 15
        while True:
            rejected = {d.event.id for d in await dead_letters() if d.event is not None}
            if ours <= set(shipping.shipped) | rejected:
                break
            if time.monotonic() > deadline:
                raise SystemExit("events were not handled in time")
            await asyncio.sleep(0.05)
        print(
            f"shipped: {sorted(shipping.shipped[e.id] for e in events if e.id in shipping.shipped)}"
        )
        for letter in await dead_letters():
            if letter.event is not None and letter.event.id in ours:
                print(
                    f"dead letter: {letter.event.data['order_id']} "
                    f"({letter.reason}: {letter.error})"
                )
    finally:
        await subscription.stop()
        await close()


if __name__ == "__main__":
    asyncio.run(main())
