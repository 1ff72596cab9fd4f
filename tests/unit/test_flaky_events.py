"""FlakyPublisher / FlakySubscriber inject failures and latency into any events port."""

from __future__ import annotations

import asyncio

import pytest

from adapters.memory import InMemoryEventBus
from domain_errors import Conflict, ServiceUnavailable
from ports import Event
from testing.fakes import FakeClock, FlakyPublisher, FlakySubscriber


def event(n: int) -> Event:
    return Event(id=f"e{n}", type="t.x", source="s", organization_id="o")


class TestFlakyPublisher:
    async def test_fails_next_n_then_passes_through(self) -> None:
        """The next n calls raise and publish nothing; later calls reach the broker."""
        bus = InMemoryEventBus()
        flaky = FlakyPublisher(bus)
        flaky.fail_next(2)
        for n in (1, 2):
            with pytest.raises(ServiceUnavailable, match="injected failure in publish"):
                await flaky.publish(event(n))
        assert (await flaky.publish(event(3))).sequence == 1
        assert [e.id for e in bus.published] == ["e3"] == [e.id for e in flaky.published]

    async def test_failure_restricted_to_a_method(self) -> None:
        """A failure for publish_many leaves publish alone."""
        flaky = FlakyPublisher(InMemoryEventBus())
        flaky.fail_next(1, methods=["publish_many"], error=Conflict("no"))
        await flaky.publish(event(1))
        with pytest.raises(Conflict, match="no"):
            await flaky.publish_many([event(2), event(3)])
        assert [len(a) for a in [await flaky.publish_many([event(4)])]] == [1]
        assert [c.method for c in flaky.calls] == ["publish", "publish_many", "publish_many"]

    def test_rejects_unknown_methods_and_negative_counts(self) -> None:
        """Typos in method names and negative counts are refused."""
        flaky = FlakyPublisher(InMemoryEventBus())
        with pytest.raises(ValueError, match="methods"):
            flaky.fail_next(1, methods=["publsh"])
        with pytest.raises(ValueError, match="count"):
            flaky.fail_next(-1)

    async def test_latency_runs_on_the_clock(self) -> None:
        """With latency set, a publish completes only when the clock has advanced."""
        clock = FakeClock()
        flaky = FlakyPublisher(InMemoryEventBus(clock=clock), clock=clock)
        flaky.set_latency(2.0)
        task = asyncio.create_task(flaky.publish(event(1)))
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(2.0)
        assert (await task).sequence == 1


class TestFlakySubscriber:
    async def test_failed_deliveries_are_redelivered(self) -> None:
        """Injected handler failures make the bus nak and redeliver; the handler then runs."""
        clock = FakeClock()
        bus = InMemoryEventBus(clock=clock)
        flaky = FlakySubscriber(bus, clock=clock)
        flaky.fail_next(1, error=ValueError)
        handled: list[str] = []

        async def handler(e: Event) -> None:
            handled.append(e.id)

        await flaky.subscribe("t.>", handler, durable="d", backoff=(0.5,))
        await bus.publish(event(1))
        await bus.run_until_idle()
        assert handled == []
        clock.advance(0.5)
        await bus.run_until_idle()
        assert handled == ["e1"]
        assert flaky.deliveries == {"e1": 2}
        await bus.close()

    async def test_a_handlers_delivery_observer_hears_the_injected_failures(self) -> None:
        """A handler carrying a delivery observer (a traced one) keeps it through the
        flaky wrapper: the bus reports the injected failure's retry and the ack."""
        clock = FakeClock()
        bus = InMemoryEventBus(clock=clock)
        flaky = FlakySubscriber(bus, clock=clock)
        flaky.fail_next(1)
        heard: list[str] = []

        class Observer:
            def attached(self) -> None:
                heard.append("attached")

            def ran(self, action: str) -> None:
                heard.append(action)

            def dead_lettered(self, reason: str) -> None:
                heard.append(f"dead:{reason}")

        class Handler:
            delivery_observer = Observer()

            async def __call__(self, e: Event) -> None:
                return None

        await flaky.subscribe("t.>", Handler(), durable="d", backoff=(0.5,))
        await bus.publish(event(1))
        await bus.run_until_idle()
        clock.advance(0.5)
        await bus.run_until_idle()
        assert heard == ["attached", "retry", "ack"]
        await bus.close()
