"""hexinfra.outbox.lag through adapters.telemetry.OutboxLagGauge on the SQLite fake:
it rises while the broker is down and falls once the relay catches up."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from adapters.memory import InMemoryEventBus, SqliteDatabase
from adapters.outbox import OutboxRelay, SqlOutbox, install
from adapters.telemetry import OutboxLagGauge
from domain_errors import ServiceUnavailable
from ports.events import Event
from testing.fakes import FakeClock, FlakyPublisher, RecordingLogger
from tests.helpers import wait_until


def _lag(reader: InMemoryMetricReader) -> list[float]:
    data = reader.get_metrics_data()
    values: list[Any] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "hexinfra.outbox.lag":
                    values.extend(p.value for p in metric.data.data_points)
    return values


async def test_outbox_lag_rises_while_the_broker_is_down_and_falls_after() -> None:
    clock = FakeClock()
    db = SqliteDatabase()
    await db.connect()
    await install(db, logger=RecordingLogger())
    bus = InMemoryEventBus(clock=clock)
    publisher = FlakyPublisher(bus, clock=clock)
    relay = OutboxRelay(db, publisher, logger=RecordingLogger(), clock=clock)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gauge = OutboxLagGauge(relay, meter_provider=provider, interval=0.01)
    assert _lag(reader) == []  # nothing before the first sample
    async with db.transaction() as tx:
        await SqlOutbox(db, clock=clock).add(
            tx, Event(type="orders.placed", source="t", organization_id="o")
        )
    publisher.fail_next(3, error=ServiceUnavailable("NATS is down"))
    for _ in range(3):
        clock.advance(10.0)
        with pytest.raises(ServiceUnavailable):
            await relay.run_once()
        await gauge.sample()
    assert _lag(reader) == [30.0]
    assert await relay.run_once() == 1
    await gauge.start()
    await gauge.start()  # idempotent
    await wait_until(lambda: gauge.value == 0.0, what="a sample after the catch-up")
    await gauge.stop()
    assert _lag(reader) == [0.0]
    await gauge.stop()
    provider.shutdown()
    await bus.close(timeout=0.5)
    await db.close()
    assert await gauge.sample() is None  # a failed sample keeps the last value
    assert gauge.value == 0.0
    with pytest.raises(ValueError, match="interval"):
        OutboxLagGauge(relay, interval=0)
