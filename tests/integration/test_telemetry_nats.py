"""adapters.telemetry on a real NATS server: one trace from the traced publisher to the
handler, and a traceparent sent by another producer (raw nats-py) is continued."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import nats
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters import event_codec
from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from adapters.telemetry import Telemetry, TracedPublisher, TracedSubscriber
from ports.events import Event
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

_names = itertools.count()
FOREIGN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def connection(nats_url: str) -> AsyncIterator[NatsConnection]:
    name = f"OTEL{next(_names)}"
    conn = NatsConnection.from_config(
        InMemoryConfig(
            {
                "NATS_URL": nats_url,
                "EVENTS_STREAM": name,
                "EVENTS_PREFIX": name.lower(),
                "EVENTS_DEAD_PREFIX": f"{name.lower()}-dead",
                "EVENTS_STORAGE": "memory",
                "EVENTS_PULL_EXPIRES_S": "1",
            }
        )
    )
    await conn.connect()
    yield conn
    for stream in (conn.settings.stream, conn.settings.dead_stream):
        try:
            await conn.jetstream.delete_stream(stream)
        except Exception:
            continue
    await conn.close()


async def test_one_trace_over_nats_and_a_foreign_traceparent(
    connection: NatsConnection, nats_url: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    tracer = provider.get_tracer("test")
    seen: list[str] = []

    async def handler(event: Event) -> None:
        seen.append(event.id)

    subscriber = TracedSubscriber(NatsSubscriber(connection), telemetry=telemetry)
    sub = await subscriber.subscribe("orders.placed", handler, durable="otel")
    ours = Event(type="orders.placed", source="it", organization_id="org", data={})
    with tracer.start_as_current_span("request"):
        await TracedPublisher(NatsPublisher(connection), telemetry=telemetry).publish(ours)
    # Another OpenTelemetry-instrumented producer: plain nats-py, W3C `traceparent`.
    theirs = Event(type="orders.placed", source="other", organization_id="org", data={})
    body, headers = event_codec.encode(theirs)
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(
            f"{connection.settings.prefix}.orders.placed",
            body,
            headers={**headers, "traceparent": FOREIGN},
        )
    finally:
        await nc.close()
    await wait_until(lambda: len(seen) == 2, timeout=10, what="both events handled")
    await sub.stop()
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name != "process orders.placed"}
    processes = {
        (s.attributes or {})["messaging.message.id"]: s
        for s in exporter.get_finished_spans()
        if s.name == "process orders.placed"
    }
    send = spans["send orders.placed"]
    assert send.context.trace_id == spans["request"].context.trace_id
    mine = processes[ours.id]
    assert mine.context.trace_id == send.context.trace_id
    assert mine.parent is not None
    assert mine.parent.span_id == send.context.span_id
    foreign = processes[theirs.id]
    assert foreign.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert foreign.parent is not None
    assert foreign.parent.span_id == 0x00F067AA0BA902B7
    provider.shutdown()
