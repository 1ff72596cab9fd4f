"""InMemoryEventBus beyond the contract: inspection, determinism, dedupe window, limits,
fairness, worker isolation, lifecycle, logging; and the shared event rules."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import AsyncMock, call

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters._event_rules import (
    NullLogger,
    backoff_delay,
    check_subscribe_options,
    describe,
    subject_pattern,
    wire_size,
)
from adapters.event_codec import decode_message, encode
from adapters.memory import InMemoryConfig, InMemoryEventBus
from domain_errors import BadRequest, ServiceUnavailable
from ports.context import bind_context, current_context
from ports.events import Event, Publisher, Subscriber
from testing.fakes import FakeClock, RecordingLogger
from testing.strategies import events as any_events


def _event(n: int, type_: str = "orders.placed", **kw: Any) -> Event:
    return Event(type=type_, source="test", organization_id="org", data={"n": n}, **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def logger() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
async def bus(clock: FakeClock, logger: RecordingLogger) -> Any:
    bus = InMemoryEventBus(clock=clock, logger=logger)
    yield bus
    await bus.close(timeout=0.5)


class TestInspection:
    """published, pending and dead_letters show what happened."""

    async def test_published_holds_stored_events_only(self, bus: InMemoryEventBus) -> None:
        """Duplicates and raw messages are not in published; stored events are, in order."""
        a, b = _event(1), _event(2)
        await bus.publish(a)
        await bus.publish(a)
        await bus.publish_many([b])
        await bus.publish_raw("orders.raw", b"{}", {"ce-specversion": "1.0"})
        assert bus.published == [a, b]

    async def test_pending_counts_until_handled(
        self, bus: InMemoryEventBus, clock: FakeClock
    ) -> None:
        """pending counts unread, delayed and in-flight events; 0 for an unknown durable."""
        gate = asyncio.Event()

        async def handler(event: Event) -> None:
            if event.data["n"] == 0:
                await gate.wait()
            if event.data["n"] == 1 and current_context()["attempt"] == 1:
                raise RuntimeError("retry me")

        await bus.publish_many([_event(i) for i in range(3)])
        assert bus.pending("p") == 0
        sub = await bus.subscribe("orders.>", handler, durable="p", backoff=(5.0,), concurrency=2)
        assert bus.pending("p") == 3
        await bus.run_until_idle(settle=0.0)
        assert bus.pending("p") == 2  # n=0 in flight, n=1 waiting 5 s, n=2 done
        assert bus.durables == ["p"]
        gate.set()
        await bus.run_until_idle(settle=0.0)
        assert bus.pending("p") == 1
        clock.advance(5.0)
        await bus.run_until_idle(settle=0.0)
        assert bus.pending("p") == 0
        await sub.stop()
        assert bus.pending("nobody") == 0

    async def test_dead_letter_carries_the_wire_form(self, bus: InMemoryEventBus) -> None:
        """A dead-lettered event keeps its payload and CloudEvents headers (request id too)."""

        async def reject(event: Event) -> None:
            from ports.events import Reject

            raise Reject("no")

        sub = await bus.subscribe("orders.>", reject, durable="d")
        event = _event(1)
        with bind_context(request_id="r-9"):
            await bus.publish(event)
        await bus.run_until_idle()
        await sub.stop()
        [letter] = bus.dead_letters
        decoded = decode_message(letter.payload, letter.headers)
        assert decoded.event == event
        assert decoded.request_id == "r-9"


class TestMockHandlers:
    """A ``unittest.mock`` handler sees nothing but its events."""

    async def test_an_async_mock_handler_is_only_called_with_events(
        self, bus: InMemoryEventBus
    ) -> None:
        """An AsyncMock handler (which invents every attribute) is awaited with the event
        and nothing else: it is not taken for a delivery observer."""
        handler = AsyncMock()
        sub = await bus.subscribe("orders.>", handler, durable="m")
        event = _event(1)
        await bus.publish(event)
        await bus.run_until_idle()
        await sub.stop()
        assert handler.mock_calls == [call(event)]


class TestDedupeWindow:
    """The duplicate window follows the bus clock."""

    async def test_window_expires_with_the_clock(self, clock: FakeClock) -> None:
        """Inside the window an id is a duplicate; after it, stored again."""
        bus = InMemoryEventBus(clock=clock, duplicate_window=10)
        event = _event(1)
        first = await bus.publish(event)
        clock.advance(9.9)
        assert (await bus.publish(event)).duplicate is True
        await bus.publish(_event(2))
        clock.advance(0.2)
        await bus.publish(_event(3))  # sweeps the expired entries
        again = await bus.publish(event)
        assert again.duplicate is False
        assert again.sequence > first.sequence
        await bus.close()

    async def test_zero_window_disables_dedupe(self, clock: FakeClock) -> None:
        """duplicate_window=0 stores every publish."""
        bus = InMemoryEventBus(clock=clock, duplicate_window=0)
        event = _event(1)
        acks = [await bus.publish(event) for _ in range(2)]
        assert [a.duplicate for a in acks] == [False, False]
        await bus.close()

    async def test_raw_messages_dedupe_on_nats_msg_id(self, bus: InMemoryEventBus) -> None:
        """publish_raw uses the Nats-Msg-Id header as the dedupe key."""
        headers = {"nats-msg-id": "m-1", "ce-specversion": "1.0"}
        first = await bus.publish_raw("a.b", b"{}", headers)
        second = await bus.publish_raw("a.b", b"{}", headers)
        assert (first.duplicate, second.duplicate, second.sequence) == (False, True, 1)


class TestDeliveryLimits:
    """max_deliver counts handler runs that ended; a run cut short by stop is not one."""

    async def test_killed_on_last_attempt_is_run_again(self, bus: InMemoryEventBus) -> None:
        """Cancelled by stop on its only allowed attempt, the event is delivered again
        with attempt 1 (as after a crash), not dead-lettered."""
        attempts: list[int] = []

        async def hang_first(event: Event) -> None:
            attempts.append(current_context()["attempt"])
            if len(attempts) == 1:
                await asyncio.Event().wait()

        sub = await bus.subscribe("orders.>", hang_first, durable="k", max_deliver=1)
        await bus.publish(_event(1))
        await bus.run_until_idle(settle=0.0)
        await sub.stop(timeout=0.0)
        sub = await bus.subscribe("orders.>", hang_first, durable="k", max_deliver=1)
        await bus.run_until_idle(settle=0.0)
        await sub.stop(timeout=0.0)
        assert attempts == [1, 1]
        assert bus.dead_letters == []
        assert bus.pending("k") == 0

    async def test_failures_recorded_under_a_higher_limit_are_dead_lettered(
        self, bus: InMemoryEventBus, clock: FakeClock
    ) -> None:
        """A member with a lower max_deliver dead-letters an event whose recorded
        failures already used it up, without running the handler."""
        runs: list[int] = []

        async def fail(event: Event) -> None:
            runs.append(current_context()["attempt"])
            raise RuntimeError("no")

        sub = await bus.subscribe("orders.>", fail, durable="m", max_deliver=5, backoff=(1,))
        await bus.publish(_event(1))
        await bus.run_until_idle()
        clock.advance(1)
        await bus.run_until_idle()
        await sub.stop()
        assert runs == [1, 2]  # the second failure's redelivery waits on the clock
        sub = await bus.subscribe("orders.>", fail, durable="m", max_deliver=2, backoff=(1,))
        clock.advance(1)
        await bus.run_until_idle()
        await sub.stop()
        assert runs == [1, 2]
        [letter] = bus.dead_letters
        assert (letter.reason, letter.attempts) == ("max_deliver", 2)


class TestFairness:
    """A backlog never keeps the event loop to itself."""

    async def test_other_tasks_run_while_a_backlog_drains(self, bus: InMemoryEventBus) -> None:
        """A task looping on sleep(0) runs many times while 1000 ready events drain."""
        handled = 0
        seen_by_ticker: list[int] = []

        async def count(event: Event) -> None:
            nonlocal handled
            handled += 1

        async def ticker() -> None:
            while True:
                seen_by_ticker.append(handled)
                await asyncio.sleep(0)

        await bus.publish_many([_event(i) for i in range(1000)])
        task = asyncio.create_task(ticker())
        sub = await bus.subscribe("orders.>", count, durable="fair")
        await bus.run_until_idle()
        task.cancel()
        await sub.stop()
        assert handled == 1000
        assert len({n for n in seen_by_ticker if 0 < n < 1000}) >= 50


class TestWorkerIsolation:
    """Workers outlive any handler; one that ends anyway is reported."""

    async def test_a_worker_that_ends_turns_running_false(
        self, bus: InMemoryEventBus, logger: RecordingLogger
    ) -> None:
        """A worker cancelled from outside: running turns false, an error is logged, the
        health check reports it, and the event it held goes back to the durable with no
        attempt used."""
        attempts: list[int] = []

        async def hang_first(event: Event) -> None:
            attempts.append(current_context()["attempt"])
            if len(attempts) == 1:
                await asyncio.Event().wait()

        sub = await bus.subscribe("orders.>", hang_first, durable="dies")
        await bus.publish(_event(1))
        await bus.run_until_idle(settle=0.0)
        [worker] = [t for t in asyncio.all_tasks() if t.get_name() == "events:dies"]
        worker.cancel()
        await asyncio.wait([worker])
        assert sub.running is False
        with pytest.raises(ServiceUnavailable, match="dies"):
            await bus.health_check()
        logger.assert_logged(
            "event worker ended unexpectedly; the subscription cannot go on",
            level="error",
            durable="dies",
        )
        other = await bus.subscribe("orders.>", hang_first, durable="dies")
        await bus.run_until_idle()
        assert attempts == [1, 1]
        assert other.running
        await sub.stop()
        await other.stop()

    async def test_unprintable_failures_are_logged(
        self, bus: InMemoryEventBus, logger: RecordingLogger, clock: FakeClock
    ) -> None:
        """A failure whose str() raises is logged (retry and dead letter) by its type."""

        class Unprintable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no text")

        async def fail(event: Event) -> None:
            raise Unprintable()

        sub = await bus.subscribe("orders.>", fail, durable="u", max_deliver=2, backoff=(1,))
        event = _event(1)
        await bus.publish(event)
        await bus.run_until_idle()
        clock.advance(1)
        await bus.run_until_idle()
        assert sub.running
        await sub.stop()
        retry = logger.assert_logged("event handler failed; will retry", event_id=event.id)
        assert "Unprintable" in retry.tags["failure"]
        logger.assert_logged(
            "event handler failed for the last time; dead-lettered", event_id=event.id
        )
        [letter] = bus.dead_letters
        assert letter.error is not None
        assert "Unprintable" in letter.error

    async def test_handler_timeout_follows_the_bus_clock(
        self, bus: InMemoryEventBus, clock: FakeClock
    ) -> None:
        """On a FakeClock a hung handler is cut off only once the clock has moved."""
        cancelled: list[float] = []

        async def hang(event: Event) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(clock.monotonic())
                raise

        sub = await bus.subscribe("orders.>", hang, durable="t", handler_timeout=5, max_deliver=1)
        await bus.publish(_event(1))
        await bus.run_until_idle(settle=0.01)
        assert cancelled == []
        clock.advance(5)
        await bus.run_until_idle()
        await sub.stop()
        assert cancelled == [5.0]
        [letter] = bus.dead_letters
        assert letter.error == "handler_timeout: the handler ran too long"


class TestPayloadLimit:
    """max_payload bounds the wire form: CloudEvents headers and JSON body."""

    @settings(max_examples=150, deadline=None)
    @given(
        event=any_events(allow_surrogates=True),
        rid=st.none() | st.text(min_size=1, max_size=20),
        slack=st.integers(-3, 3),
    )
    async def test_refused_exactly_when_the_wire_form_is_too_big(
        self, event: Event, rid: str | None, slack: int
    ) -> None:
        """publish refuses an event iff the codec's headers and body exceed the limit."""
        body, headers = encode(event, request_id=rid)
        size = wire_size(body, headers)
        bus = InMemoryEventBus(clock=FakeClock(), max_payload=max(1, size + slack))
        with bind_context(request_id=rid):
            if size + slack < size:
                with pytest.raises(BadRequest):
                    await bus.publish(event, subject="orders.placed")
                assert bus.published == []
            else:
                await bus.publish(event, subject="orders.placed")
                assert bus.published == [event]

    async def test_raw_messages_and_settings(self, clock: FakeClock) -> None:
        """publish_raw counts headers too; from_config reads EVENTS_MAX_PAYLOAD_BYTES;
        a limit below 1 is a BadRequest; the default is 1 MiB."""
        assert InMemoryEventBus(clock=clock).max_payload == 1024 * 1024
        bus = InMemoryEventBus.from_config(
            InMemoryConfig({"EVENTS_MAX_PAYLOAD_BYTES": "100"}), clock=clock
        )
        assert bus.max_payload == 100
        await bus.publish_raw("a.b", b"x" * 100, None)
        with pytest.raises(BadRequest):
            await bus.publish_raw("a.b", b"x" * 90, {"ce-specversion": "1.0"})
        assert len(bus._subjects) == 1
        with pytest.raises(BadRequest):
            InMemoryEventBus(clock=clock, max_payload=0)


class TestOwnCopies:
    """Every delivery gets data of its own, whatever JSON it holds."""

    async def test_data_orjson_cannot_write_is_copied_too(self, bus: InMemoryEventBus) -> None:
        """Integers beyond 64 bits and lone surrogates arrive equal, in a fresh copy."""
        seen: list[Event] = []

        async def keep(event: Event) -> None:
            seen.append(event)

        event = Event(
            type="orders.placed",
            source="t",
            organization_id="o",
            data={"big": 2**70, "text": "\ud800", "nested": {"list": [1, {"a": 2}]}},
        )
        subs = [
            await bus.subscribe("orders.>", keep, durable="one"),
            await bus.subscribe("orders.>", keep, durable="two"),
        ]
        await bus.publish(event)
        await bus.run_until_idle()
        for sub in subs:
            await sub.stop()
        first, second = seen
        assert first == second == event
        assert first.data is not second.data
        assert first.data["nested"] is not second.data["nested"]
        assert first.data["nested"] is not event.data["nested"]


class TestImmediateRedelivery:
    """An empty backoff redelivers at once."""

    async def test_empty_backoff_redelivers_without_the_clock(self, bus: InMemoryEventBus) -> None:
        """With backoff=() a failed event is delivered again without advancing time."""
        attempts: list[int] = []

        async def fail_once(event: Event) -> None:
            attempts.append(current_context()["attempt"])
            if len(attempts) == 1:
                raise RuntimeError("once")

        sub = await bus.subscribe("orders.>", fail_once, durable="now", backoff=())
        assert (sub.subject, sub.durable) == ("orders.>", "now")
        await bus.publish(_event(1))
        await bus.run_until_idle()
        await sub.stop()
        assert attempts == [1, 2]


class TestDeterminism:
    """Same inputs, same order of deliveries."""

    async def _run(self) -> list[tuple[str, int, int]]:
        clock = FakeClock()
        bus = InMemoryEventBus(clock=clock)
        seen: list[tuple[str, int, int]] = []

        def make(name: str) -> Any:
            async def handler(event: Event) -> None:
                attempt = current_context()["attempt"]
                seen.append((name, event.data["n"], attempt))
                await asyncio.sleep(0)
                if event.data["n"] % 3 == 0 and attempt < 3:
                    raise RuntimeError("again")

            return handler

        await bus.subscribe("orders.>", make("a1"), durable="a", concurrency=3, backoff=(1, 2))
        await bus.subscribe("orders.>", make("a2"), durable="a", concurrency=2, backoff=(1, 2))
        await bus.subscribe("orders.*", make("b"), durable="b", backoff=(0.5,))
        await bus.publish_many([_event(i) for i in range(12)])
        for _ in range(6):
            await bus.run_until_idle(settle=0.0)
            clock.advance(0.5)
        await bus.close()
        return seen

    async def test_runs_are_reproducible(self) -> None:
        """Two runs of the same scenario on fake clocks deliver in the same order."""
        first = await self._run()
        second = await self._run()
        assert first == second
        assert len(first) == 12 * 2 + 4 * 2 * 2


class TestRunUntilIdle:
    """run_until_idle returns even when handlers wait on something else."""

    async def test_returns_while_a_handler_sleeps_on_the_clock(
        self, bus: InMemoryEventBus, clock: FakeClock
    ) -> None:
        """A handler sleeping on the fake clock does not keep run_until_idle busy."""
        done: list[int] = []

        async def sleepy(event: Event) -> None:
            await clock.sleep(10)
            done.append(event.data["n"])

        await bus.subscribe("orders.>", sleepy, durable="s")
        await bus.publish(_event(1))
        await bus.run_until_idle(settle=0.01)
        assert done == []
        assert bus.pending("s") == 1
        clock.advance(10)
        await bus.run_until_idle()
        assert done == [1]


class TestLifecycle:
    """connect, health, close, and use after close."""

    async def test_closed_bus_refuses_work(self, clock: FakeClock) -> None:
        """After close: publish/subscribe/health raise ServiceUnavailable; close repeats."""
        bus = InMemoryEventBus(clock=clock)
        await bus.connect()
        await bus.health_check()

        async def fail(event: Event) -> None:
            raise RuntimeError("x")

        await bus.subscribe("orders.>", fail, durable="c", backoff=(60,))
        await bus.publish(_event(1))
        await bus.run_until_idle()
        assert clock.sleepers == 1  # a delayed redelivery is waiting
        await bus.close()
        await bus.close()
        assert clock.sleepers == 0
        with pytest.raises(ServiceUnavailable):
            await bus.publish(_event(2))
        with pytest.raises(ServiceUnavailable):
            await bus.subscribe("orders.>", fail, durable="c")
        with pytest.raises(ServiceUnavailable):
            await bus.health_check()

    async def test_from_config_and_defaults(self) -> None:
        """from_config reads EVENTS_STREAM and EVENTS_DUPLICATE_WINDOW_S; no clock means
        the system clock, and it is a Publisher and a Subscriber."""
        bus = InMemoryEventBus.from_config(
            InMemoryConfig({"EVENTS_STREAM": "ORDERS", "EVENTS_DUPLICATE_WINDOW_S": "0"})
        )
        assert isinstance(bus, Publisher)
        assert isinstance(bus, Subscriber)
        event = _event(1)
        acks = [await bus.publish(event), await bus.publish(event)]
        assert [(a.stream, a.duplicate) for a in acks] == [("ORDERS", False), ("ORDERS", False)]
        handled = asyncio.Event()

        async def handler(e: Event) -> None:
            handled.set()

        sub = await bus.subscribe("orders.>", handler, durable="real")
        await asyncio.wait_for(handled.wait(), 2)
        assert sub.running
        await bus.close()
        assert not sub.running

    async def test_publish_takes_events_only(self, bus: InMemoryEventBus) -> None:
        """Publishing something that is not an Event is a TypeError."""
        with pytest.raises(TypeError):
            await bus.publish({"type": "x"})  # type: ignore[arg-type]


class TestLogging:
    """Retries are warnings, dead letters errors, with the event named."""

    async def test_retry_and_dead_letter_are_logged(
        self, bus: InMemoryEventBus, logger: RecordingLogger, clock: FakeClock
    ) -> None:
        """A failing handler logs a warning per retry and an error when dead-lettered."""

        async def fail(event: Event) -> None:
            raise RuntimeError("boom")

        sub = await bus.subscribe("orders.>", fail, durable="log", max_deliver=2, backoff=(1,))
        event = _event(1)
        await bus.publish(event)
        await bus.run_until_idle()
        clock.advance(1)
        await bus.run_until_idle()
        await bus.publish_raw("orders.bad", b"nope", None)
        await bus.run_until_idle()
        await sub.stop()
        logger.assert_logged("event handler failed; will retry", level="warning", attempt=1)
        logger.assert_logged(
            "event handler failed for the last time; dead-lettered",
            level="error",
            error=RuntimeError,
            event_id=event.id,
        )
        logger.assert_logged("undecodable event dead-lettered", level="error", durable="log")


class TestEventRules:
    """The rules both adapters share."""

    def test_backoff_delay(self) -> None:
        """The n-th failure waits backoff[n-1]; the last value repeats; empty is 0."""
        assert [backoff_delay((1, 2, 5), n) for n in (1, 2, 3, 4, 9)] == [1, 2, 5, 5, 5]
        assert backoff_delay((), 3) == 0.0

    def test_subject_patterns(self) -> None:
        """'*' is one token, '>' one or more trailing tokens, literals match exactly."""
        assert subject_pattern("a.*.c").match("a.b.c")
        assert not subject_pattern("a.*.c").match("a.b.b.c")
        assert subject_pattern("a.>").match("a.b.c")
        assert not subject_pattern("a.>").match("a")
        assert not subject_pattern("a.b").match("a.bc")
        assert not subject_pattern("a+b").match("aab")

    def test_option_checks(self) -> None:
        """ack_wait must be positive and finite; backoff finite and non-negative."""
        for bad in ({"ack_wait": 0}, {"ack_wait": float("inf")}, {"backoff": (-1,)}):
            options: dict[str, Any] = {
                "max_deliver": 1,
                "ack_wait": 1.0,
                "backoff": (),
                "concurrency": 1,
                **bad,
            }
            with pytest.raises(BadRequest):
                check_subscribe_options(**options)

    def test_null_logger_and_describe(self) -> None:
        """NullLogger discards, bind returns itself, fatal exits; describe caps length."""
        log = NullLogger()
        log.debug("x")
        log.info("x")
        log.warning("x")
        log.warn("x")
        log.error("x", exc=None)
        assert log.bind(a=1) is log
        with pytest.raises(SystemExit):
            log.fatal("bye")
        assert describe(ValueError("v")) == "ValueError: v"
        assert len(describe(ValueError("v" * 1000))) == 500
