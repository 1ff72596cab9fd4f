"""The ``hexinfra.*`` metrics on real servers, read with the OpenTelemetry SDK's
``InMemoryMetricReader`` (a ``MeterProvider`` passed explicitly, never the global one):

- the pool gauges move under load on PostgreSQL and return to 0 when idle;
- handled-by-outcome, dead letters and handler durations count a NATS run of known
  acks, retries and dead letters exactly (an undecodable message included);
- the outbox lag rises while NATS is down and falls once it is back (a NATS server of
  this module's own, stopped and restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from adapters.outbox import OutboxRelay, SqlOutbox, install
from adapters.postgres import PostgresDatabase, PostgresSettings
from adapters.telemetry import OutboxLagGauge, Telemetry, TracedDatabase, TracedSubscriber
from ports.events import Event, Reject
from testing.fakes import RecordingLogger
from testing.servers import NatsServer, nats_server
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


class Metrics:
    """An SDK MeterProvider with an in-memory reader, and the ``Telemetry`` over it."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = Telemetry(meter_provider=self.provider)

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def by(self, name: str, attribute: str) -> dict[Any, Any]:
        """The values of ``name`` summed by ``attribute`` (zeros left out)."""
        totals: dict[Any, Any] = {}
        for p in self.points(name):
            key = p.attributes.get(attribute)
            totals[key] = totals.get(key, 0) + p.value
        return {k: v for k, v in totals.items() if v}

    def value(self, name: str) -> float | None:
        """The single point of gauge ``name``; ``None`` before one is reported."""
        values = [p.value for p in self.points(name)]
        assert len(values) <= 1, values
        return values[0] if values else None


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.provider.shutdown()


async def test_pool_gauges_move_under_load_and_return_to_zero(
    database_url: str, metrics: Metrics
) -> None:
    """Pool of 2, 8 concurrent pg_sleep queries: in_use 2 and waiting > 0 are observed
    while they run; both are 0 once they are done."""
    inner = PostgresDatabase(
        PostgresSettings(url=database_url, pool_min_size=2, pool_max_size=2, pool_timeout=10.0),
        RecordingLogger(),
    )
    db = TracedDatabase(inner, telemetry=metrics.telemetry)
    await db.connect()
    try:
        assert metrics.value("hexinfra.db.pool.in_use") == 0
        assert metrics.value("hexinfra.db.pool.waiting") == 0
        seen: list[tuple[float | None, float | None]] = []

        def saturated() -> bool:
            now = (
                metrics.value("hexinfra.db.pool.in_use"),
                metrics.value("hexinfra.db.pool.waiting"),
            )
            seen.append(now)
            return now[0] == 2 and (now[1] or 0) > 0

        queries = [asyncio.ensure_future(db.fetch_value("SELECT pg_sleep(0.2)")) for _ in range(8)]
        await wait_until(saturated, timeout=5, what="in_use 2 and waiting > 0")
        await asyncio.gather(*queries)
        assert max(w or 0 for _, w in seen) <= 6  # 8 callers, 2 served
        assert metrics.value("hexinfra.db.pool.in_use") == 0
        assert metrics.value("hexinfra.db.pool.waiting") == 0
        point = metrics.points("hexinfra.db.pool.in_use")[0]
        assert dict(point.attributes) == {
            "db.system.name": "postgresql",
            "db.client.connection.pool.name": "hexinfra",
        }
        durations = metrics.points("hexinfra.db.query.duration")
        assert sum(p.count for p in durations) == 8
    finally:
        await db.close()


ACK, FLAKY, REJECT, POISON = "ack", "fail-once", "reject", "always-fails"
KINDS = {ACK: 4, FLAKY: 3, REJECT: 3, POISON: 2}


@pytest.fixture
async def connection(events_config: dict[str, str]) -> AsyncIterator[NatsConnection]:
    conn = NatsConnection.from_config(
        InMemoryConfig({**events_config, "EVENTS_STORAGE": "memory", "EVENTS_PULL_EXPIRES_S": "1"})
    )
    await conn.connect()
    yield conn
    await conn.close()


async def test_handled_by_outcome_counts_a_known_run_exactly(
    connection: NatsConnection, events_config: dict[str, str], metrics: Metrics
) -> None:
    """4 ack at once, 3 fail once then ack, 3 Reject, 2 always fail (max_deliver 2),
    and one raw message that does not decode: exact counts of every outcome."""
    runs: dict[str, int] = {}

    async def handler(event: Event) -> None:
        kind = event.data["kind"]
        runs[event.id] = runs.get(event.id, 0) + 1
        if kind == REJECT:
            raise Reject("not for us")
        if kind == POISON or (kind == FLAKY and runs[event.id] == 1):
            raise RuntimeError("handler failed")

    inner = NatsSubscriber(connection)
    subscriber = TracedSubscriber(inner, telemetry=metrics.telemetry)
    sub = await subscriber.subscribe(
        "orders.placed", handler, durable="metrics", max_deliver=2, backoff=(0.05,)
    )
    events = [
        Event(type="orders.placed", source="it", organization_id="org", data={"kind": kind})
        for kind, count in KINDS.items()
        for _ in range(count)
    ]
    await NatsPublisher(connection).publish_many(events)
    nc = await nats.connect(events_config["NATS_URL"])
    try:
        await nc.jetstream().publish(
            f"{connection.settings.prefix}.orders.placed", b"\xffnot an event"
        )
    finally:
        await nc.close()
    expected_runs = KINDS[ACK] + 2 * KINDS[FLAKY] + KINDS[REJECT] + 2 * KINDS[POISON]
    expected_letters = KINDS[REJECT] + KINDS[POISON] + 1

    def settled() -> bool:
        handled = sum(metrics.by("hexinfra.events.handled", "hexinfra.outcome").values())
        letters = sum(metrics.by("hexinfra.events.dead_letters", "messaging.system").values())
        return bool(handled == expected_runs and letters == expected_letters)

    await wait_until(settled, timeout=10, what="every run judged, every dead letter stored")
    await sub.stop()
    assert metrics.by("hexinfra.events.handled", "hexinfra.outcome") == {
        "ack": KINDS[ACK] + KINDS[FLAKY],
        "retry": KINDS[FLAKY] + KINDS[POISON],
        "dead_letter": KINDS[REJECT] + KINDS[POISON],
    }
    assert metrics.by("hexinfra.events.dead_letters", "hexinfra.dead_letter.reason") == {
        "rejected": KINDS[REJECT],
        "max_deliver": KINDS[POISON],
        "undecodable": 1,
    }
    durations = metrics.points("hexinfra.events.handler.duration")
    assert sum(p.count for p in durations) == expected_runs == sum(runs.values())
    letters = await inner.dead_letters()
    assert sorted(d.reason for d in letters) == sorted(
        ["rejected"] * KINDS[REJECT] + ["max_deliver"] * KINDS[POISON] + ["undecodable"]
    )
    handled_labels = {
        k: v
        for k, v in metrics.points("hexinfra.events.handled")[0].attributes.items()
        if k != "hexinfra.outcome"
    }
    assert handled_labels == {
        "messaging.system": "nats",
        "messaging.destination.name": "orders.placed",
        "messaging.consumer.group.name": "metrics",
    }


@pytest.fixture(scope="module")
def own_nats() -> Iterator[NatsServer]:
    """A NATS (JetStream, file storage) of this module's own, free to be stopped."""
    with nats_server() as server:
        yield server


async def test_outbox_lag_rises_while_nats_is_down_and_falls_after(
    database_url: str, own_nats: NatsServer, metrics: Metrics
) -> None:
    """Relay and lag gauge running; NATS stopped; a row written: the lag rises past
    0.3 s and keeps rising; NATS started again: the relay publishes it, the lag is 0."""
    log = RecordingLogger()
    db = PostgresDatabase(PostgresSettings(url=database_url, pool_min_size=1, pool_max_size=4), log)
    conn = NatsConnection.from_config(
        InMemoryConfig(
            {
                "NATS_URL": own_nats.url,
                "EVENTS_STREAM": "LAG",
                "EVENTS_PREFIX": "lag",
                "EVENTS_DEAD_PREFIX": "lag-dead",
                "EVENTS_STORAGE": "file",
                "EVENTS_PUBLISH_TIMEOUT_S": "0.5",
                "EVENTS_PUBLISH_RETRIES": "0",
                "EVENTS_API_TIMEOUT_S": "1",
                "NATS_RECONNECT_WAIT_S": "0.05",
            }
        ),
        logger=log,
    )
    await db.connect()
    await conn.connect()
    await install(db, logger=log)
    relay = OutboxRelay(db, NatsPublisher(conn), logger=log, poll_interval=0.05)
    gauge = OutboxLagGauge(relay, telemetry=metrics.telemetry, interval=0.05)
    lag = "hexinfra.outbox.lag"
    try:
        await relay.start()
        await gauge.start()
        await wait_until(lambda: metrics.value(lag) == 0.0, what="a first sample: no lag")
        await asyncio.to_thread(own_nats.stop)
        async with db.transaction() as tx:
            await SqlOutbox(db).add(
                tx, Event(type="orders.placed", source="it", organization_id="org")
            )
        await wait_until(lambda: (metrics.value(lag) or 0.0) > 0.3, timeout=5, what="the lag rises")
        risen = metrics.value(lag) or 0.0
        await wait_until(
            lambda: (metrics.value(lag) or 0.0) > risen, timeout=5, what="and keeps rising"
        )
        await asyncio.to_thread(own_nats.start)
        await wait_until(lambda: metrics.value(lag) == 0.0, timeout=10, what="the lag falls to 0")
        info = await conn.jetstream.stream_info("LAG")
        assert info.state.messages == 1
    finally:
        await gauge.stop()
        await relay.stop(0)
        if not own_nats.running:
            await asyncio.to_thread(own_nats.start)
        with contextlib.suppress(Exception):
            await conn.jetstream.delete_stream("LAG")
        await conn.close()
        await db.close()
