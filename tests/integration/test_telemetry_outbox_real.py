"""One OpenTelemetry trace through the transactional outbox on a real PostgreSQL and a
real NATS JetStream (issue 15, point 2; ADR 0031), with the SDK's in-memory exporter.

The orders example is driven as a user runs it: ``build_infrastructure`` with
``OTEL_ENABLED=true`` (traced ports, the relay publishing through the traced
publisher), ``build_app`` (migrations, the projection through the inbox), the HTTP
app behind ``TracedASGIMiddleware``, requests through ``httpx.ASGITransport``.
The in-memory twin of these tests is ``tests/unit/test_telemetry_outbox_trace.py``;
a foreign ``traceparent`` sent by raw nats-py is continued in
``tests/integration/test_telemetry_nats.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import httpx
import nats
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from adapters import event_codec
from adapters.bootstrap import Infrastructure, build_infrastructure
from adapters.memory import InMemoryConfig
from adapters.telemetry import (
    Telemetry,
    TracedASGIMiddleware,
    TracedDatabase,
    TracedPublisher,
    TracedSubscriber,
    expose_current_context,
    join_logs_to_traces,
)
from examples.orders.app import build_app
from examples.orders.domain import OrderService
from ports.events import Event
from testing.fakes import RecordingLogger
from tests.helpers import wait_until
from tests.span_tree import attribute_text, render_span_tree, statement

pytestmark = pytest.mark.integration

# Values that must never reach a span attribute (the order id only as part of the
# event id, in messaging.message.id).
ORDER: Final = {
    "id": "o-7c1f",
    "organization_id": "org-sekret-42",
    "customer": "Ada Lovelace-Byron",
    "amount_cents": 987654,
}
EVENT_ID: Final = "order.placed:o-7c1f"

ONE_TRACE: Final = """\
POST /orders [SERVER] http.request.method=POST http.route=/orders url.path=/orders http.response.status_code=201
  INSERT [CLIENT] db.system.name=postgresql db.operation.name=INSERT db.query.text="INSERT INTO orders ..."
  INSERT [CLIENT] db.system.name=postgresql db.operation.name=INSERT db.query.text="INSERT INTO hexinfra_outbox ..."
  SELECT [CLIENT] db.system.name=postgresql db.operation.name=SELECT db.query.text="SELECT pg_notify ..."
  send order.placed [PRODUCER] messaging.system=nats messaging.operation.type=send messaging.destination.name=order.placed messaging.message.id=order.placed:o-7c1f messaging.batch.message_count=1
    process order.placed [CONSUMER] messaging.system=nats messaging.operation.type=process messaging.destination.name=order.placed messaging.consumer.group.name=order-totals messaging.message.id=order.placed:o-7c1f hexinfra.attempt=1 hexinfra.outcome=ack
      INSERT [CLIENT] db.system.name=postgresql db.operation.name=INSERT db.query.text="INSERT INTO hexinfra_inbox ..."
      INSERT [CLIENT] db.system.name=postgresql db.operation.name=INSERT db.query.text="INSERT INTO organization_totals ..."
      DELETE [CLIENT] db.system.name=postgresql db.operation.name=DELETE db.query.text="DELETE FROM hexinfra_inbox ..."\
"""  # noqa: E501 - the tree as text, one span a line


@dataclass
class Orders:
    """The orders service on real servers, traced into ``exporter``."""

    infra: Infrastructure
    service: OrderService
    http: httpx.AsyncClient
    exporter: InMemorySpanExporter
    logger: RecordingLogger
    config: dict[str, str]

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def processed(self, event_id: str) -> ReadableSpan | None:
        for span in self.named("process order.placed"):
            if (span.attributes or {}).get("messaging.message.id") == event_id:
                return span
        return None

    async def handled(self, event_id: str) -> ReadableSpan:
        """The handler's process span for ``event_id``, once it has ended."""
        await wait_until(
            lambda: self.processed(event_id) is not None,
            timeout=15,
            what=f"the process span of {event_id}",
        )
        span = self.processed(event_id)
        assert span is not None
        return span


@pytest.fixture
async def orders(database_url: str, events_config: dict[str, str]) -> AsyncIterator[Orders]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    config = {
        **events_config,
        "INFRA_ADAPTERS": "real",
        "DATABASE_URL": database_url,
        "OTEL_ENABLED": "true",
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": "4",
        "EVENTS_STORAGE": "memory",
        "EVENTS_PULL_EXPIRES_S": "1",
    }
    logger = RecordingLogger()
    # This test's providers, not the global ones (set once per process by OpenTelemetry).
    infra = build_infrastructure(InMemoryConfig(config), logger=logger, telemetry=telemetry)
    assert isinstance(infra.database, TracedDatabase)
    assert isinstance(infra.publisher, TracedPublisher)
    assert isinstance(infra.subscriber, TracedSubscriber)
    try:
        async with infra:
            app, service = await build_app(infra)
            transport = httpx.ASGITransport(app=TracedASGIMiddleware(app, telemetry=telemetry))
            async with httpx.AsyncClient(transport=transport, base_url="http://orders") as http:
                exporter.clear()  # the migrations' statements
                logger.clear()
                yield Orders(infra, service, http, exporter, logger, config)
    finally:
        join_logs_to_traces(False)
        expose_current_context(False)
        provider.shutdown()


def _parent_is(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


def _inserts(spans: list[ReadableSpan], table: str) -> list[ReadableSpan]:
    """The spans of the INSERTs into ``table``."""
    return [
        s
        for s in spans
        if statement(str((s.attributes or {}).get("db.query.text", ""))) == f"INSERT INTO {table}"
    ]


async def test_a_placed_order_is_one_trace_from_the_request_to_the_handlers_write(
    orders: Orders,
) -> None:
    """POST /orders on real servers: request, order and outbox INSERTs, the relay's
    send, the handler's process span and its writes are one trace, hop by hop."""
    response = await orders.http.post("/orders", json=ORDER)
    assert response.status_code == 201
    process = await orders.handled(EVENT_ID)
    spans = orders.spans()

    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}
    tree = render_span_tree(spans)
    print(f"\n{tree}")
    assert tree == ONE_TRACE

    # The chain, hop by hop: request -> its writes and the send -> process -> writes.
    assert server.parent is None
    (order_insert,) = _inserts(spans, "orders")
    (outbox_insert,) = _inserts(spans, "hexinfra_outbox")
    (send,) = orders.named("send order.placed")
    for child in (order_insert, outbox_insert, send):
        assert _parent_is(child, server)
    assert [link.context.span_id for link in send.links] == [server.context.span_id]
    assert _parent_is(process, send)
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    (inbox_insert,) = _inserts(spans, "hexinfra_inbox")
    (totals_write,) = _inserts(spans, "organization_totals")
    for child in (inbox_insert, totals_write):
        assert _parent_is(child, process)

    # Kinds and semantic-convention attributes.
    assert (server.kind, send.kind, process.kind) == (
        SpanKind.SERVER,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    )
    for write in (order_insert, outbox_insert, inbox_insert, totals_write):
        assert write.kind is SpanKind.CLIENT
        assert (write.attributes or {})["db.system.name"] == "postgresql"
        assert (write.attributes or {})["db.operation.name"] == "INSERT"
    for span, operation in ((send, "send"), (process, "process")):
        attributes = span.attributes or {}
        assert attributes["messaging.system"] == "nats"
        assert attributes["messaging.destination.name"] == "order.placed"
        assert attributes["messaging.operation.type"] == operation
        assert attributes["messaging.message.id"] == EVENT_ID

    # No parameter value and no event data in any attribute, span name or event.
    secrets = [str(v) for v in ORDER.values()] + [json.dumps(ORDER)]
    for span in spans:
        assert not span.events
        for key, value in (span.attributes or {}).items():
            if key == "messaging.message.id":
                assert value == EVENT_ID
                continue
            assert not any(secret in f"{key}={attribute_text(value)}" for secret in secrets), (
                span.name,
                key,
            )
        assert not any(secret in span.name for secret in secrets)

    # Log lines written inside the spans carry their ids.
    trace_id = f"{server.context.trace_id:032x}"
    stored = orders.logger.assert_logged("order stored").to_dict()
    assert (stored["trace_id"], stored["span_id"]) == (trace_id, f"{server.context.span_id:016x}")
    projected = orders.logger.assert_logged("order projected").to_dict()
    assert (projected["trace_id"], projected["span_id"]) == (
        trace_id,
        f"{process.context.span_id:016x}",
    )


async def test_a_row_added_outside_any_span_starts_a_new_trace_at_the_relays_send(
    orders: Orders,
) -> None:
    """An order placed with no span current: NULL trace context in its outbox row, the
    relay's send is a root and the handler's process span continues it."""
    await orders.service.place_order(
        order_id="o-quiet", organization_id="org-1", customer="Grace", amount_cents=5
    )
    process = await orders.handled("order.placed:o-quiet")
    spans = orders.spans()

    (send,) = orders.named("send order.placed")
    assert send.parent is None
    assert not send.links
    assert _parent_is(process, send)
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    (inbox_insert,) = _inserts(spans, "hexinfra_inbox")
    assert _parent_is(inbox_insert, process)
    # The order's writes, outside any span, are roots of traces of their own.
    writes = _inserts(spans, "orders") + _inserts(spans, "hexinfra_outbox")
    assert len(writes) == 2
    for write in writes:
        assert write.parent is None
        assert write.context.trace_id != send.context.trace_id
    assert render_span_tree(s for s in spans if s.context.trace_id == send.context.trace_id) == (
        "send order.placed [PRODUCER] messaging.system=nats messaging.operation.type=send"
        " messaging.destination.name=order.placed messaging.message.id=order.placed:o-quiet"
        " messaging.batch.message_count=1\n"
        "  process order.placed [CONSUMER] messaging.system=nats messaging.operation.type=process"
        " messaging.destination.name=order.placed messaging.consumer.group.name=order-totals"
        " messaging.message.id=order.placed:o-quiet hexinfra.attempt=1 hexinfra.outcome=ack\n"
        '    INSERT [CLIENT] db.system.name=postgresql db.operation.name=INSERT db.query.text="INSERT INTO hexinfra_inbox ..."\n'  # noqa: E501
        '    INSERT [CLIENT] db.system.name=postgresql db.operation.name=INSERT db.query.text="INSERT INTO organization_totals ..."\n'  # noqa: E501
        '    DELETE [CLIENT] db.system.name=postgresql db.operation.name=DELETE db.query.text="DELETE FROM hexinfra_inbox ..."'  # noqa: E501
    )
    row = await orders.infra.database.fetch_one(
        "SELECT traceparent, tracestate FROM hexinfra_outbox WHERE event_id = %s",
        ("order.placed:o-quiet",),
    )
    assert row is not None
    assert (row["traceparent"], row["tracestate"]) == (None, None)


async def test_an_event_without_trace_context_starts_a_new_trace_in_the_handler(
    orders: Orders,
) -> None:
    """An event published by raw nats-py with no trace headers: the handler's process
    span is the root of a new trace (no parent, no link), its writes below it."""
    event = Event(
        id="order.placed:o-raw",
        type="order.placed",
        source="another-service",
        organization_id="org-1",
        data={"id": "o-raw", "amount_cents": 3},
    )
    body, headers = event_codec.encode(event)
    assert not [h for h in headers if "trace" in h.lower()]
    client = await nats.connect(orders.config["NATS_URL"])
    try:
        await client.jetstream().publish(
            f"{orders.config['EVENTS_PREFIX']}.order.placed", body, headers=headers
        )
    finally:
        await client.close()
    process = await orders.handled(event.id)
    spans = orders.spans()

    assert process.parent is None
    assert not process.links
    assert (process.attributes or {})["hexinfra.outcome"] == "ack"
    assert not orders.named("send order.placed")
    others = [s for s in spans if s is not process]
    assert others
    for span in others:
        assert _parent_is(span, process)
