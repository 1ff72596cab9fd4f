"""adapters.telemetry: spans, trace context on events, logs joined to traces, metrics,
on the in-memory adapters with the OpenTelemetry SDK's in-memory exporter and reader."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
from collections.abc import Iterator
from typing import Any, cast
from unittest.mock import AsyncMock, call

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from adapters import event_codec
from adapters._telemetry_switch import telemetry_wanted
from adapters._trace_carrier import OUTGOING, current
from adapters.memory import InMemoryEventBus, SqliteDatabase
from adapters.structlog_logger import StructlogLogger
from adapters.telemetry import (
    Telemetry,
    TracedDatabase,
    TracedPublisher,
    TracedSubscriber,
    expose_current_context,
    join_logs_to_traces,
    operation_name,
    sdk_configured,
)
from domain_errors import ConfigurationError, Conflict
from ports.database import Database, Transaction
from ports.events import Event, Publisher, Reject, Subscriber
from testing.fakes import FakeClock, FlakySubscriber, RecordingLogger
from tests.helpers import wait_until

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Otel:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = Telemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )
        self.tracer = self.tracer_provider.get_tracer("test")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def by(self, name: str, attribute: str) -> dict[Any, Any]:
        """The points of ``name`` summed by ``attribute``'s value (counters)."""
        totals: dict[Any, Any] = {}
        for p in self.points(name):
            key = p.attributes.get(attribute)
            totals[key] = totals.get(key, 0) + p.value
        return {k: v for k, v in totals.items() if v}

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        result: list[Any] = []
        if data is None:
            return result
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        result.extend(metric.data.data_points)
        return result


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.tracer_provider.shutdown()
    o.meter_provider.shutdown()


@pytest.fixture
async def db(otel: Otel) -> Any:
    inner = SqliteDatabase()
    await inner.connect()
    traced = TracedDatabase(inner, telemetry=otel.telemetry)
    await traced.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    otel.exporter.clear()
    yield traced
    await traced.close()


@pytest.fixture
async def bus() -> Any:
    bus = InMemoryEventBus()
    yield bus
    await bus.close(timeout=0.5)


def _event(n: int = 1, **kw: Any) -> Event:
    return Event(type="orders.placed", source="test", organization_id="org", data={"n": n}, **kw)


class TestDatabase:
    async def test_statements_are_client_spans_without_values(
        self, db: TracedDatabase, otel: Otel
    ) -> None:
        """One CLIENT span per statement, named by operation; the SQL text, never values."""
        assert isinstance(db, Database)
        await db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (1, "secret-value"))
        assert await db.fetch_value("SELECT name FROM t WHERE id = %s", (1,)) == "secret-value"
        insert, select = otel.spans()
        assert (insert.name, select.name) == ("INSERT", "SELECT")
        assert insert.kind is SpanKind.CLIENT
        assert insert.attributes == {
            "db.system.name": "sqlite",
            "db.operation.name": "INSERT",
            "db.query.text": "INSERT INTO t (id, name) VALUES (%s, %s)",
        }
        assert "secret-value" not in repr([dict(s.attributes or {}) for s in otel.spans()])

    async def test_durations_are_seconds_in_seconds_buckets(
        self, db: TracedDatabase, otel: Otel
    ) -> None:
        """The duration histograms advise bucket boundaries in seconds (1 ms to 10 s),
        not the SDK's default ones made for milliseconds."""
        from adapters.telemetry._instruments import SECONDS_BUCKETS

        await db.fetch_value("SELECT 1")
        points = otel.points("hexinfra.db.query.duration")
        [point] = [p for p in points if p.attributes["db.operation.name"] == "SELECT"]
        assert tuple(point.explicit_bounds) == SECONDS_BUCKETS
        assert point.sum < 1.0

    async def test_transactions_and_savepoints_are_traced(
        self, db: TracedDatabase, otel: Otel
    ) -> None:
        async with db.transaction() as tx:
            assert isinstance(tx, Transaction)
            await tx.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (1, "a"))
            async with tx.transaction() as inner:
                await inner.fetch_all("SELECT * FROM t")
                await inner.fetch_one("SELECT * FROM t")
        assert [s.name for s in otel.spans()] == ["INSERT", "SELECT", "SELECT"]

    async def test_a_failed_statement_records_its_type_only(
        self, db: TracedDatabase, otel: Otel
    ) -> None:
        await db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (1, "row-value"))
        with pytest.raises(Conflict):
            await db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (1, "row-value"))
        failed = otel.spans()[-1]
        assert failed.status.status_code is StatusCode.ERROR
        assert failed.status.description == "Conflict"
        assert failed.attributes is not None
        assert failed.attributes["error.type"] == "Conflict"
        assert not failed.events  # no exception event: its message may quote values
        durations = otel.points("hexinfra.db.query.duration")
        assert sum(p.count for p in durations) == 3  # CREATE TABLE, two INSERTs
        assert {p.attributes.get("error.type") for p in durations} == {None, "Conflict"}

    async def test_pool_gauges_read_the_databases_pool(self, otel: Otel) -> None:
        class Pooled(SqliteDatabase):
            usage = (3, 2)

            def pool_usage(self) -> tuple[int, int]:
                return self.usage

        pooled = Pooled()
        TracedDatabase(pooled, telemetry=otel.telemetry)
        assert [p.value for p in otel.points("hexinfra.db.pool.in_use")] == [3]
        assert [p.value for p in otel.points("hexinfra.db.pool.waiting")] == [2]
        pooled.usage = (0, 0)
        assert [p.value for p in otel.points("hexinfra.db.pool.in_use")] == [0]

    async def test_a_pool_is_one_source_however_often_it_is_wrapped(self, otel: Otel) -> None:
        """Wrapped twice, or by two wrappers: one source; another pool on the same meter
        is reported too (by pool name), never dropped; a discarded pool stops."""

        class Pooled(SqliteDatabase):
            def __init__(self, usage: tuple[int, int], name: str) -> None:
                super().__init__()
                self.usage = usage
                self.settings = type("S", (), {"application_name": name})()

            def pool_usage(self) -> tuple[int, int]:
                return self.usage

        first, other = Pooled((3, 2), "a"), Pooled((1, 0), "b")
        TracedDatabase(TracedDatabase(first, telemetry=otel.telemetry), telemetry=otel.telemetry)
        TracedDatabase(first, telemetry=otel.telemetry)
        TracedDatabase(first, meter_provider=otel.meter_provider)  # its own Telemetry
        TracedDatabase(other, telemetry=otel.telemetry)
        assert otel.by("hexinfra.db.pool.in_use", "db.client.connection.pool.name") == {
            "a": 3,
            "b": 1,
        }
        assert otel.by("hexinfra.db.pool.waiting", "db.client.connection.pool.name") == {"a": 2}
        named = TracedDatabase(Pooled((4, 0), "a"), telemetry=otel.telemetry, pool_name="c")
        assert otel.by("hexinfra.db.pool.in_use", "db.client.connection.pool.name") == {
            "a": 3,
            "b": 1,
            "c": 4,
        }
        del other, named
        gc.collect()
        assert otel.by("hexinfra.db.pool.in_use", "db.client.connection.pool.name") == {"a": 3}

    def test_operation_names(self) -> None:
        assert operation_name("  -- note\n/* x */ select 1") == "SELECT"
        assert operation_name("WITH x AS (SELECT 1) SELECT * FROM x") == "WITH"
        assert operation_name("") == "UNKNOWN"
        assert operation_name("(SELECT 1)") == "UNKNOWN"


class TestEvents:
    async def test_one_trace_from_request_to_handler_db_write(
        self, bus: InMemoryEventBus, db: TracedDatabase, otel: Otel
    ) -> None:
        """request -> send -> process (child of send, linked to it) -> the handler's write."""
        publisher = TracedPublisher(bus, telemetry=otel.telemetry)
        subscriber = TracedSubscriber(bus, telemetry=otel.telemetry)
        assert isinstance(publisher, Publisher)
        assert isinstance(subscriber, Subscriber)

        async def handler(event: Event) -> None:
            await db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (event.data["n"], "x"))

        with otel.tracer.start_as_current_span("subscriber start-up"):
            await subscriber.subscribe("orders.*", handler, durable="d")
        with otel.tracer.start_as_current_span("POST /orders"):
            await db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (100, "y"))
            event = _event(7)
            await publisher.publish(event)
        await bus.run_until_idle()
        request, send, process = (
            otel.span("POST /orders"),
            otel.span("send orders.placed"),
            otel.span("process orders.*"),
        )
        writes = [s for s in otel.spans() if s.name == "INSERT"]
        trace_id = request.context.trace_id
        assert {s.context.trace_id for s in (send, process, *writes)} == {trace_id}
        assert send.parent is not None
        assert send.parent.span_id == request.context.span_id
        assert process.parent is not None
        assert process.parent.span_id == send.context.span_id
        assert [link.context.span_id for link in process.links] == [send.context.span_id]
        assert {w.parent.span_id for w in writes if w.parent} == {
            request.context.span_id,
            process.context.span_id,
        }
        assert send.kind is SpanKind.PRODUCER
        assert process.kind is SpanKind.CONSUMER
        assert send.attributes == {
            "messaging.system": "nats",
            "messaging.destination.name": "orders.placed",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.message.id": event.id,
        }
        attrs = dict(process.attributes or {})
        assert attrs["messaging.operation.type"] == "process"
        assert attrs["messaging.message.id"] == event.id
        assert attrs["messaging.destination.name"] == "orders.placed"
        assert attrs["messaging.destination.template"] == "orders.*"
        assert attrs["messaging.consumer.group.name"] == "d"
        values = [v for s in (send, process) for v in (s.attributes or {}).values()]
        assert 7 not in values  # never event data

    async def test_a_traced_mock_handler_is_only_called_with_events(
        self, bus: InMemoryEventBus, otel: Otel
    ) -> None:
        """An AsyncMock handler under TracedSubscriber and FlakySubscriber is awaited with
        the event and nothing else, and the ack is counted once."""
        handler = AsyncMock()
        subscriber = TracedSubscriber(FlakySubscriber(bus), telemetry=otel.telemetry)
        sub = await subscriber.subscribe("orders.*", handler, durable="m")
        event = _event(1)
        await bus.publish(event)
        await bus.run_until_idle()
        await sub.stop()
        assert handler.mock_calls == [call(event)]
        assert otel.by("hexinfra.events.handled", "hexinfra.outcome") == {"ack": 1}

    async def test_the_wire_carries_ce_traceparent(self, bus: InMemoryEventBus, otel: Otel) -> None:
        """The dead letter's wire form shows the headers the event travelled with."""
        publisher = TracedPublisher(bus, telemetry=otel.telemetry)

        async def reject(event: Event) -> None:
            raise Reject("no")

        await bus.subscribe("orders.placed", reject, durable="d")
        await publisher.publish_many([_event(1)])
        await bus.run_until_idle()
        send = otel.span("send orders.placed")
        headers = bus.dead_letters[0].headers
        assert headers["ce-traceparent"].startswith(
            f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}-"
        )
        assert (send.attributes or {})["messaging.batch.message_count"] == 1

    async def test_a_stored_context_is_the_send_spans_parent(
        self, bus: InMemoryEventBus, otel: Otel
    ) -> None:
        """What the outbox relay does: the context a row was written under, in OUTGOING
        around the publish, is continued by the send span (and linked)."""
        with otel.tracer.start_as_current_span("POST /orders"):
            expose_current_context()
            try:
                stored = current()
            finally:
                expose_current_context(False)
        assert current() is None
        assert stored is not None
        token = OUTGOING.set(stored)
        try:
            await TracedPublisher(bus, telemetry=otel.telemetry).publish(_event(1))
        finally:
            OUTGOING.reset(token)
        request, send = otel.span("POST /orders"), otel.span("send orders.placed")
        assert send.context.trace_id == request.context.trace_id
        assert send.parent is not None
        assert send.parent.span_id == request.context.span_id
        assert [link.context.span_id for link in send.links] == [request.context.span_id]

    async def test_an_event_without_context_starts_a_new_trace(
        self, bus: InMemoryEventBus, otel: Otel
    ) -> None:
        subscriber = TracedSubscriber(bus, telemetry=otel.telemetry)
        seen: list[str] = []

        async def handler(event: Event) -> None:
            seen.append(event.id)

        with otel.tracer.start_as_current_span("start-up"):
            await subscriber.subscribe("orders.placed", handler, durable="d")
            await bus.publish(_event(1))  # untraced publisher
        await bus.run_until_idle()
        process = otel.span("process orders.placed")
        assert process.parent is None
        assert not process.links
        assert process.context.trace_id != otel.span("start-up").context.trace_id

    @pytest.mark.parametrize("header", ["ce-traceparent", "traceparent"])
    async def test_a_foreign_producers_traceparent_is_continued(
        self, bus: InMemoryEventBus, otel: Otel, header: str
    ) -> None:
        """A CloudEvent from another (OpenTelemetry-instrumented) producer."""
        subscriber = TracedSubscriber(bus, telemetry=otel.telemetry)

        async def handler(event: Event) -> None:
            pass

        await subscriber.subscribe("orders.placed", handler, durable="d")
        body, headers = event_codec.encode(_event(1))
        await bus.publish_raw(
            "orders.placed", body, {**headers, header: TRACEPARENT, "ce-tracestate": "k=v"}
        )
        await bus.run_until_idle()
        process = otel.span("process orders.placed")
        assert process.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
        assert process.parent is not None
        assert process.parent.span_id == 0xB7AD6B7169203331
        assert process.parent.is_remote
        assert process.parent.trace_state.to_header() == "k=v"

    async def test_a_malformed_traceparent_starts_a_new_trace(
        self, bus: InMemoryEventBus, otel: Otel
    ) -> None:
        subscriber = TracedSubscriber(bus, telemetry=otel.telemetry)

        async def handler(event: Event) -> None:
            pass

        await subscriber.subscribe("orders.placed", handler, durable="d")
        body, headers = event_codec.encode(_event(1))
        await bus.publish_raw("orders.placed", body, {**headers, "ce-traceparent": "garbage"})
        await bus.run_until_idle()
        assert otel.span("process orders.placed").parent is None

    async def test_handled_by_outcome(self, otel: Otel) -> None:
        """ack, retry, dead_letter (Reject and the last failed attempt), durations."""
        clock = FakeClock()
        bus = InMemoryEventBus(clock=clock)
        subscriber = TracedSubscriber(bus, telemetry=otel.telemetry)
        publisher = TracedPublisher(bus, telemetry=otel.telemetry)

        async def handler(event: Event) -> None:
            if event.data["n"] == 1:
                raise RuntimeError("always fails")
            if event.data["n"] == 2:
                raise Reject("bad")

        await subscriber.subscribe(
            "orders.placed", handler, durable="d", max_deliver=3, backoff=(0.001,)
        )
        await publisher.publish_many([_event(0), _event(1), _event(2)])
        for _ in range(3):
            await bus.run_until_idle(settle=0.0)
            clock.advance(1.0)
        await bus.run_until_idle(settle=0.0)
        await bus.close(timeout=0.5)
        assert len(bus.dead_letters) == 2
        handled = {
            p.attributes["hexinfra.outcome"]: p.value
            for p in otel.points("hexinfra.events.handled")
        }
        assert handled == {"ack": 1, "retry": 2, "dead_letter": 2}
        assert otel.by("hexinfra.events.dead_letters", "hexinfra.dead_letter.reason") == {
            "max_deliver": 1,
            "rejected": 1,
        }
        assert [p.value for p in otel.points("hexinfra.events.published")] == [3]
        assert sum(p.count for p in otel.points("hexinfra.events.handler.duration")) == 5
        failed = [s for s in otel.spans() if s.status.status_code is StatusCode.ERROR]
        assert len(failed) == 4
        assert all("always fails" not in repr(s.status.description) for s in failed)

    async def test_outcomes_are_the_subscriptions_verdicts(self, otel: Otel) -> None:
        """Timeout, Reject, a BaseException, the last attempt: counted as the bus acted,
        even for a handler that swallows its timeout's cancellation and returns."""
        clock = FakeClock()
        bus = InMemoryEventBus(clock=clock)
        subscriber = TracedSubscriber(bus, telemetry=otel.telemetry)

        async def handler(event: Event) -> None:
            kind = event.data["n"]
            if kind == 1:  # runs past handler_timeout, swallows the cancellation
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
            elif kind == 2:
                raise Reject("no")
            elif kind == 3:
                raise KeyboardInterrupt  # a BaseException is a failed run too

        await subscriber.subscribe(
            "orders.placed", handler, durable="d", max_deliver=2, backoff=(1.0,), handler_timeout=5
        )
        events = [_event(n) for n in range(4)]
        for event in events:
            await bus.publish(event)
        for _ in range(3):
            await bus.run_until_idle(settle=0.01)
            clock.advance(5.0)
        await wait_until(lambda: len(bus.dead_letters) == 3, what="three dead letters")
        await bus.close(timeout=0.5)
        assert otel.by("hexinfra.events.handled", "hexinfra.outcome") == {
            "ack": 1,
            "retry": 2,
            "dead_letter": 3,
        }
        assert sorted(d.reason for d in bus.dead_letters) == [
            "max_deliver",
            "max_deliver",
            "rejected",
        ]
        assert otel.by("hexinfra.events.dead_letters", "hexinfra.dead_letter.reason") == {
            "max_deliver": 2,
            "rejected": 1,
        }
        assert sum(p.count for p in otel.points("hexinfra.events.handler.duration")) == 6
        swallowed = [
            s
            for s in otel.spans()
            if s.attributes is not None and s.attributes["messaging.message.id"] == events[1].id
        ]
        assert len(swallowed) == 2  # both runs of the swallowing handler
        for span in swallowed:  # never claimed as an ack by its span
            assert span.attributes is not None
            assert "hexinfra.outcome" not in span.attributes
            assert span.status.status_code is StatusCode.ERROR

    async def test_a_run_cut_short_by_stop_is_not_counted(self, otel: Otel) -> None:
        """stop() cancelling a handler: taken back (no outcome), its duration recorded;
        a handler raising CancelledError itself is a failed run (retry)."""
        bus = InMemoryEventBus()
        subscriber = TracedSubscriber(bus, telemetry=otel.telemetry)
        started = asyncio.Event()

        async def handler(event: Event) -> None:
            if event.data["n"] == 1:
                raise asyncio.CancelledError  # its own: a failure, not a stop
            started.set()
            await asyncio.Event().wait()

        sub = await subscriber.subscribe("orders.placed", handler, durable="d", backoff=(60.0,))
        await bus.publish(_event(1))
        await bus.publish(_event(0))
        await asyncio.wait_for(started.wait(), 5)
        await sub.stop(timeout=0)
        await bus.close(timeout=0.5)
        assert otel.by("hexinfra.events.handled", "hexinfra.outcome") == {"retry": 1}
        assert sum(p.count for p in otel.points("hexinfra.events.handler.duration")) == 2
        cut = [s for s in otel.spans() if (s.attributes or {}).get("hexinfra.attempt") == 1]
        assert sorted(str((s.attributes or {}).get("hexinfra.outcome")) for s in cut) == [
            "None",
            "retry",
        ]

    async def test_an_undecodable_message_is_a_dead_letter(
        self, bus: InMemoryEventBus, otel: Otel
    ) -> None:
        """A payload that never reaches a handler is counted, by reason ``undecodable``."""
        seen: list[str] = []

        async def handler(event: Event) -> None:
            seen.append(event.id)

        await TracedSubscriber(bus, telemetry=otel.telemetry).subscribe(
            "orders.placed", handler, durable="d"
        )
        await bus.publish_raw("orders.placed", b"not json", {"content-type": "application/json"})
        await bus.run_until_idle()
        assert [d.reason for d in bus.dead_letters] == ["undecodable"]
        assert not seen
        assert otel.by("hexinfra.events.dead_letters", "hexinfra.dead_letter.reason") == {
            "undecodable": 1
        }
        assert otel.points("hexinfra.events.handled") == []

    async def test_a_subscriber_that_wraps_handlers_is_judged_by_the_wrapper(
        self, otel: Otel
    ) -> None:
        """Under a subscriber whose handler wrapper hides the observer, the traced
        handler applies the same pure policy itself: the counts still match the bus."""
        clock = FakeClock()
        bus = InMemoryEventBus(clock=clock)

        class Hiding:
            """A Subscriber that wraps each handler in a plain function."""

            async def subscribe(self, subject: str, handler: Any, **options: Any) -> Any:
                async def plain(event: Event) -> None:
                    await handler(event)

                return await bus.subscribe(subject, plain, **options)

        subscriber = TracedSubscriber(cast(Subscriber, Hiding()), telemetry=otel.telemetry)
        runs: dict[int, int] = {}

        async def handler(event: Event) -> None:
            n = event.data["n"]
            runs[n] = runs.get(n, 0) + 1
            if n == 2:
                raise Reject("no")
            if n == 0 or (n == 1 and runs[n] == 1):
                raise RuntimeError("fails")

        await subscriber.subscribe(
            "orders.placed", handler, durable="d", max_deliver=2, backoff=(1.0,)
        )
        for n in range(3):  # 0: fails twice (dead letter); 1: fails once then acks; 2: Reject
            await bus.publish(_event(n))
        for _ in range(3):
            await bus.run_until_idle(settle=0.0)
            clock.advance(1.0)
        await bus.close(timeout=0.5)
        assert sorted(d.reason for d in bus.dead_letters) == ["max_deliver", "rejected"]
        assert otel.by("hexinfra.events.handled", "hexinfra.outcome") == {
            "ack": 1,
            "retry": 2,
            "dead_letter": 2,
        }
        assert otel.by("hexinfra.events.dead_letters", "hexinfra.dead_letter.reason") == {
            "max_deliver": 1,
            "rejected": 1,
        }

    async def test_an_observed_handler_is_still_told(
        self, bus: InMemoryEventBus, otel: Otel
    ) -> None:
        """TracedSubscriber over a TracedSubscriber: each wrapper counts every verdict
        once (no fallback double count)."""
        second = Otel()
        inner = TracedSubscriber(bus, telemetry=second.telemetry)
        outer = TracedSubscriber(inner, telemetry=otel.telemetry)

        async def handler(event: Event) -> None:
            raise Reject("no")

        await outer.subscribe("orders.placed", handler, durable="d")
        await bus.publish(_event(1))
        await bus.run_until_idle()
        for o in (otel, second):
            assert o.by("hexinfra.events.handled", "hexinfra.outcome") == {"dead_letter": 1}
            assert o.by("hexinfra.events.dead_letters", "hexinfra.dead_letter.reason") == {
                "rejected": 1
            }
        second.meter_provider.shutdown()
        second.tracer_provider.shutdown()


class TestLogs:
    def test_lines_inside_a_span_carry_its_ids(self, otel: Otel) -> None:
        stream = io.BytesIO()
        logger = StructlogLogger(service="svc", stream=stream)
        recording = RecordingLogger()
        join_logs_to_traces()
        try:
            logger.info("outside")
            recording.info("outside")
            with otel.tracer.start_as_current_span("work") as span:
                logger.info("inside")
                recording.info("inside")
        finally:
            join_logs_to_traces(False)
        logger.info("after")
        outside, inside, after = (json.loads(line) for line in stream.getvalue().splitlines())
        ctx = span.get_span_context()
        ids = {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
        assert {k: inside[k] for k in ids} == ids
        assert "trace_id" not in outside
        assert "trace_id" not in after
        first, second = recording.records
        assert "trace_id" not in first.context
        assert {k: second.context[k] for k in ids} == ids


_GAUGE_ACROSS_SET_PROVIDER = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from adapters.telemetry import Telemetry

class Source:
    def __init__(self, v):
        self.v = v

before = Telemetry()  # on the API's proxy provider
a = before.shared_gauge("hexinfra.test.gauge", unit="1", description="t", combine="sum")
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
after = Telemetry()  # on the SDK's
b = after.shared_gauge("hexinfra.test.gauge", unit="1", description="t", combine="sum")
one, two = Source(1), Source(2)
a.add(one, lambda s: [(s.v, {})])
b.add(two, lambda s: [(s.v, {})])
data = reader.get_metrics_data()
print(sum(
    p.value
    for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    if m.name == "hexinfra.test.gauge" for p in m.data.data_points
))
"""


class TestGlobalProvider:
    def test_gauges_made_before_and_after_the_sdk_is_set_are_one(self) -> None:
        """A wrapper built on the global provider before the SDK was set and one built
        after report into one gauge (a second gauge of the name would be dropped)."""
        import subprocess
        import sys

        ran = subprocess.run(
            [sys.executable, "-c", _GAUGE_ACROSS_SET_PROVIDER],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == "3"


class TestSwitch:
    def test_explicit_values(self) -> None:
        assert telemetry_wanted("false") is False
        assert telemetry_wanted("0") is False
        assert telemetry_wanted("true") is True
        with pytest.raises(ConfigurationError, match="OTEL_ENABLED"):
            telemetry_wanted("maybe")

    def test_unset_follows_the_global_sdk(self) -> None:
        assert telemetry_wanted(None) is sdk_configured()
        assert sdk_configured() is isinstance(trace.get_tracer_provider(), TracerProvider)


class TestCodec:
    def test_trace_context_round_trips(self) -> None:
        body, headers = event_codec.encode(_event(), trace=(TRACEPARENT, "a=b"))
        assert headers["ce-traceparent"] == TRACEPARENT
        assert headers["ce-tracestate"] == "a=b"
        assert event_codec.decode_message(body, headers).trace == (TRACEPARENT, "a=b")
        plain_body, plain = event_codec.encode(_event())
        assert "ce-traceparent" not in plain
        assert event_codec.decode_message(plain_body, plain).trace is None

    def test_a_tracestate_with_spaces_survives_the_headers(self) -> None:
        body, headers = event_codec.encode(_event(), trace=(TRACEPARENT, "a=b, c=d"))
        assert headers["ce-tracestate"] == "a=b,%20c=d"
        assert event_codec.decode_message(body, headers).trace == (TRACEPARENT, "a=b, c=d")

    def test_structured_mode_reads_traceparent(self) -> None:
        raw = {
            "specversion": "1.0",
            "id": "1",
            "type": "t",
            "source": "s",
            "organizationid": "o",
            "time": "2024-01-01T00:00:00Z",
            "traceparent": TRACEPARENT,
        }
        decoded = event_codec.decode_message(
            json.dumps(raw).encode(), {"content-type": "application/cloudevents+json"}
        )
        assert decoded.trace == (TRACEPARENT, None)


class TestHttpEdge:
    async def test_a_made_up_method_never_names_the_span(self, otel: Otel) -> None:
        """A method outside HTTP's own is ``_OTHER`` and the span is named ``HTTP``
        (span names stay bounded whatever a client sends); the original is kept, cut."""
        import httpx

        from adapters.telemetry import TracedASGIMiddleware

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        traced = TracedASGIMiddleware(app, telemetry=otel.telemetry)
        transport = httpx.ASGITransport(app=traced)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.request("X" * 100, "/")
            await client.get("/")
        made_up, get = otel.spans()
        assert (made_up.name, get.name) == ("HTTP", "GET")
        assert made_up.attributes is not None
        assert made_up.attributes["http.request.method"] == "_OTHER"
        assert made_up.attributes["http.request.method_original"] == "X" * 32

    async def test_server_span_continues_the_callers_trace(self, otel: Otel) -> None:
        import httpx
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from adapters.telemetry import TracedASGIMiddleware

        async def order(request: Any) -> PlainTextResponse:
            with otel.tracer.start_as_current_span("inside"):
                return PlainTextResponse("ok", status_code=201)

        app = Starlette(routes=[Route("/orders/{id}", order, methods=["POST"])])
        traced = TracedASGIMiddleware(app, telemetry=otel.telemetry)
        transport = httpx.ASGITransport(app=traced)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/orders/42?secret=1", headers={"traceparent": TRACEPARENT}
            )
            untraced = await client.post("/orders/43")
        assert (response.status_code, untraced.status_code) == (201, 201)
        servers = [s for s in otel.spans() if s.kind is SpanKind.SERVER]
        assert [s.name for s in servers] == ["POST /orders/{id}", "POST /orders/{id}"]
        first, second = servers
        assert first.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
        assert second.parent is None
        assert first.attributes == {
            "http.request.method": "POST",
            "url.path": "/orders/42",
            "url.scheme": "http",
            "http.route": "/orders/{id}",
            "http.response.status_code": 201,
        }
        inside = [s for s in otel.spans() if s.name == "inside"]
        assert inside[0].parent is not None
        assert inside[0].parent.span_id == first.context.span_id

    async def test_no_second_span_under_an_open_server_span(self, otel: Otel) -> None:
        from adapters.telemetry import TracedASGIMiddleware

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        traced = TracedASGIMiddleware(app, telemetry=otel.telemetry)
        with otel.tracer.start_as_current_span("instrumentation", kind=SpanKind.SERVER):
            await traced({"type": "http", "method": "GET", "path": "/"}, receive, send)
        await traced({"type": "lifespan"}, receive, send)
        assert [s.name for s in otel.spans()] == ["instrumentation"]
