"""The Publisher/Subscriber contract on InMemoryEventBus (fake and real clock) and on
NATS JetStream (a stream per test on the session server)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from adapters.memory import InMemoryEventBus
from ports.clock import SystemClock
from testing.contracts.events import (
    EventContract,
    EventHarness,
    InMemoryEventHarness,
    nats_event_harness,
)
from testing.fakes import FakeClock, RecordingLogger

_names = itertools.count(1)


class TestInMemoryEventBus(EventContract):
    """InMemoryEventBus on a FakeClock: deterministic, time moves by advance()."""

    @pytest.fixture
    async def event_harness(self) -> AsyncIterator[EventHarness]:
        clock = FakeClock()
        bus = InMemoryEventBus(clock=clock, logger=RecordingLogger())
        yield InMemoryEventHarness(bus, clock)
        await bus.close(timeout=1.0)


class TestInMemoryEventBusRealClock(EventContract):
    """InMemoryEventBus on the system clock, as an example service would run it."""

    @pytest.fixture
    async def event_harness(self) -> AsyncIterator[EventHarness]:
        clock = SystemClock()
        bus = InMemoryEventBus(clock=clock, logger=RecordingLogger())
        yield InMemoryEventHarness(bus, clock)
        await bus.close(timeout=1.0)


@pytest.mark.integration
class TestNatsJetStream(EventContract):
    """NatsPublisher/NatsSubscriber on a real server: each test its own streams."""

    @pytest.fixture
    async def event_harness(self, nats_url: str) -> AsyncIterator[EventHarness]:
        async with nats_event_harness(
            nats_url, name=f"CONTRACT{next(_names)}", logger=RecordingLogger()
        ) as harness:
            yield harness
