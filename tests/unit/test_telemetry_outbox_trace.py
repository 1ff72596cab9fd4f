"""One trace through the transactional outbox (issue 15, point 2; ADR 0031), on the
SQLite fake and the in-memory bus with the OpenTelemetry SDK's in-memory exporter:
the request's span -> its DB writes -> the relay's send -> the handler's process span
-> the handler's DB write. A row added outside any span starts a new trace at send."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState

from adapters._trace_carrier import OUTGOING
from adapters.memory import InMemoryEventBus, SqliteDatabase
from adapters.outbox import OutboxRelay, SqlOutbox, install
from adapters.telemetry import (
    Telemetry,
    TracedDatabase,
    TracedPublisher,
    TracedSubscriber,
    expose_current_context,
)
from ports.events import Event
from testing.fakes import RecordingLogger


@dataclass
class World:
    exporter: InMemorySpanExporter
    tracer: trace.Tracer
    inner: SqliteDatabase
    db: TracedDatabase
    bus: InMemoryEventBus
    outbox: SqlOutbox
    relay: OutboxRelay
    subscriber: TracedSubscriber

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    tp = TracerProvider()
    yield tp
    tp.shutdown()


@pytest.fixture
async def world(provider: TracerProvider) -> AsyncIterator[World]:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    inner = SqliteDatabase()
    await inner.connect()
    await install(inner, logger=RecordingLogger())
    db = TracedDatabase(inner, telemetry=telemetry)
    await db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER)")
    await db.execute("CREATE TABLE shipments (order_id TEXT PRIMARY KEY)")
    bus = InMemoryEventBus()
    # As build_infrastructure wires it: the relay publishes through the traced
    # publisher and polls through the plain database (no span per poll).
    relay = OutboxRelay(inner, TracedPublisher(bus, telemetry=telemetry), logger=RecordingLogger())
    expose_current_context()
    try:
        exporter.clear()
        yield World(
            exporter=exporter,
            tracer=provider.get_tracer("test"),
            inner=inner,
            db=db,
            bus=bus,
            outbox=SqlOutbox(db),
            relay=relay,
            subscriber=TracedSubscriber(bus, telemetry=telemetry),
        )
    finally:
        expose_current_context(False)
        await bus.close(timeout=0.5)
        await inner.close()


def _placed(order: str) -> Event:
    return Event(type="orders.placed", source="test", organization_id="org", data={"id": order})


async def _place(w: World, order: str) -> None:
    async with w.db.transaction() as tx:
        await tx.execute("INSERT INTO orders (id, total) VALUES (%s, %s)", (order, 42))
        await w.outbox.add(tx, _placed(order))


async def _ship_on_placed(w: World) -> None:
    async def ship(event: Event) -> None:
        await w.db.execute("INSERT INTO shipments (order_id) VALUES (%s)", (event.data["id"],))

    await w.subscriber.subscribe("orders.placed", ship, durable="shipping")


async def test_one_trace_from_the_request_through_the_outbox_to_the_handlers_write(
    world: World,
) -> None:
    """Request span, order INSERT, outbox INSERT, send, process and the handler's
    INSERT share one trace id; each hop's parent is the one before it."""
    w = world
    await _ship_on_placed(w)
    with w.tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as request:
        await _place(w, "o-1")
    row = await w.inner.fetch_one("SELECT traceparent, tracestate FROM hexinfra_outbox")
    ctx = request.get_span_context()
    assert row is not None
    assert row["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert row["tracestate"] is None

    # The relay runs later, outside the request (its own task in a service).
    assert await w.relay.run_once() == 1
    assert OUTGOING.get() is None  # reset after the publish
    await w.bus.run_until_idle()
    assert await w.inner.fetch_value("SELECT count(*) FROM shipments") == 1

    spans = w.spans()
    assert {s.context.trace_id for s in spans} == {ctx.trace_id}
    (server,) = w.named("POST /orders")
    (send,) = w.named("send orders.placed")
    (process,) = w.named("process orders.placed")
    inserts = w.named("INSERT")
    assert len(inserts) == 3  # the order, the outbox row, the shipment
    order_insert, outbox_insert, shipment_insert = sorted(inserts, key=lambda s: s.start_time or 0)
    assert "hexinfra_outbox" in str((outbox_insert.attributes or {})["db.query.text"])
    assert "shipments" in str((shipment_insert.attributes or {})["db.query.text"])
    for child in (order_insert, outbox_insert):
        assert child.parent is not None
        assert child.parent.span_id == server.context.span_id
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None
    assert send.parent.span_id == server.context.span_id
    assert [link.context.span_id for link in send.links] == [server.context.span_id]
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert shipment_insert.parent is not None
    assert shipment_insert.parent.span_id == process.context.span_id


async def test_a_row_added_outside_any_span_starts_a_new_trace_at_send(world: World) -> None:
    """No span when the row was added: NULL trace context, and the send span is a root
    whose trace the process span continues."""
    w = world
    await _ship_on_placed(w)
    await _place(w, "o-2")  # no request span
    row = await w.inner.fetch_one("SELECT traceparent, tracestate FROM hexinfra_outbox")
    assert row is not None
    assert (row["traceparent"], row["tracestate"]) == (None, None)
    assert await w.relay.run_once() == 1
    await w.bus.run_until_idle()
    (send,) = w.named("send orders.placed")
    (process,) = w.named("process orders.placed")
    assert send.parent is None
    assert not send.links
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    # The order and outbox writes, made outside any span, are roots of other traces;
    # the handler's write continues the send's.
    roots = [s for s in w.named("INSERT") if s.parent is None]
    assert len(roots) == 2
    assert send.context.trace_id not in {s.context.trace_id for s in roots}
    (handled,) = [s for s in w.named("INSERT") if s.parent is not None]
    assert handled.context.trace_id == send.context.trace_id


async def test_runs_are_split_by_trace_context_and_keep_tracestate(world: World) -> None:
    """Two requests' rows in one batch: one publish_many (send span) per trace context,
    each continuing its request (tracestate included); a traced row after an untraced
    one is not merged with it."""
    w = world
    await _ship_on_placed(w)
    upstream = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1")]),
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(upstream))
    with w.tracer.start_as_current_span("POST /orders", context=parent) as first:
        await _place(w, "a1")
        await _place(w, "a2")
    with w.tracer.start_as_current_span("POST /orders") as second:
        await _place(w, "b1")
    await _place(w, "c1")  # no span
    rows = await w.inner.fetch_all(
        "SELECT traceparent, tracestate FROM hexinfra_outbox ORDER BY position"
    )
    assert [r["tracestate"] for r in rows] == ["vendor=v1", "vendor=v1", None, None]
    assert await w.relay.run_once() == 4
    await w.bus.run_until_idle()
    sends = sorted(w.named("send orders.placed"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["messaging.batch.message_count"] for s in sends] == [2, 1, 1]
    a, b, c = sends
    assert a.context.trace_id == upstream.trace_id == first.get_span_context().trace_id
    assert a.parent is not None
    assert a.parent.span_id == first.get_span_context().span_id
    assert a.context.trace_state.get("vendor") == "v1"
    assert b.context.trace_id == second.get_span_context().trace_id
    assert c.parent is None
    assert c.context.trace_id not in {upstream.trace_id, b.context.trace_id}
    processes = w.named("process orders.placed")
    assert len(processes) == 4
    by_send = {s.context.span_id: s for s in sends}
    assert sorted(
        by_send[p.parent.span_id].context.span_id for p in processes if p.parent is not None
    ) == sorted([a.context.span_id, a.context.span_id, b.context.span_id, c.context.span_id])
