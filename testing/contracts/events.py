"""The Publisher/Subscriber contract, run against every event adapter.

Subclass :class:`EventContract` and provide an async ``event_harness`` fixture
yielding an :class:`EventHarness` for the adapter under test::

    class TestInMemoryEventBus(EventContract):
        @pytest_asyncio.fixture
        async def event_harness(self) -> AsyncIterator[EventHarness]:
            clock = FakeClock()
            bus = InMemoryEventBus(clock=clock)
            yield InMemoryEventHarness(bus, clock)
            await bus.close(timeout=1)

The harness hides how time passes and how to wait: on a fake clock ``advance``
moves the clock and delivers what became due; on a real broker it lets that much
real time pass, and ``wait_until`` polls a condition up to a deadline. So one test
body runs on both. The suite covers the cases of watermill's universal pub/sub
tests (payload and metadata intact, concurrent subscribers, many subjects, resend
on error, continue after errors, close and reopen without loss, concurrent close,
subject isolation, consumer groups, a new durable reading old events, order for a
single subscriber) and ours (dedupe, max_deliver to a dead letter, Reject, poison
payloads, wildcards, request context, long handlers kept alive, stop semantics).

Capabilities (``EventHarness.capabilities``) that an adapter lacks skip the tests
that need them, with the reason; no assertion is ever weakened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import pytest

from domain_errors import BadRequest, Conflict
from ports.clock import Clock
from ports.context import bind_context, current_context
from ports.events import DeadLetter, Event, Publisher, Reject, Subscriber, Subscription
from ports.logger import Logger

if TYPE_CHECKING:
    from adapters.memory import InMemoryEventBus
    from adapters.nats_events import NatsConnection

__all__ = [
    "EventContract",
    "EventHarness",
    "InMemoryEventHarness",
    "NatsEventHarness",
    "nats_event_harness",
    "RAW_MESSAGES",
    "FAKE_TIME",
]

RAW_MESSAGES: Final = "raw_messages"
"""Capability: ``inject_raw`` puts arbitrary bytes and headers on the wire."""
FAKE_TIME: Final = "fake_time"
"""Capability: time moves only through ``advance`` (deterministic runs)."""


class EventHarness(Protocol):
    """What the contract needs from an adapter under test."""

    publisher: Publisher
    subscriber: Subscriber
    capabilities: frozenset[str]

    @property
    def max_payload(self) -> int:
        """The largest message (headers and body, in bytes) the adapter accepts."""
        ...

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = ..., what: str = ""
    ) -> None:
        """Return once ``predicate()`` is true; ``AssertionError`` after ``timeout``."""
        ...

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (fake clock: move it and deliver what is due)."""
        ...

    def monotonic(self) -> float:
        """The adapter's monotonic time (its clock's)."""
        ...

    async def inject_raw(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None
    ) -> None:
        """Put a raw message on ``subject`` as if another publisher sent it."""
        ...

    async def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter stored so far."""
        ...


class InMemoryEventHarness:
    """An :class:`EventHarness` over an :class:`~adapters.memory.InMemoryEventBus`.

    With a :class:`testing.FakeClock` it has ``FAKE_TIME``: ``advance`` moves the
    clock; ``wait_until`` runs the bus until idle between checks.
    """

    def __init__(self, bus: InMemoryEventBus, clock: Clock) -> None:
        self.bus = bus
        self.clock = clock
        self.publisher: Publisher = bus
        self.subscriber: Subscriber = bus
        fake = hasattr(clock, "advance")
        self.capabilities = frozenset({RAW_MESSAGES, FAKE_TIME} if fake else {RAW_MESSAGES})

    @property
    def max_payload(self) -> int:
        """The bus's ``max_payload``."""
        return self.bus.max_payload

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = ""
    ) -> None:
        """Run the bus until idle, check, repeat until ``timeout`` real seconds."""
        deadline = time.monotonic() + timeout
        while True:
            await self.bus.run_until_idle(settle=0.0)
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
            await asyncio.sleep(0.001)

    async def advance(self, seconds: float) -> None:
        """Move a fake clock (and deliver what became due), or let real time pass."""
        advance = getattr(self.clock, "advance", None)
        if advance is not None:
            await self.bus.run_until_idle(settle=0.0)
            advance(seconds)
            await self.bus.run_until_idle(settle=0.0)
        else:
            await asyncio.sleep(seconds)

    def monotonic(self) -> float:
        """The bus clock's monotonic time."""
        return self.clock.monotonic()

    async def inject_raw(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None
    ) -> None:
        """Store a raw message with :meth:`InMemoryEventBus.publish_raw`."""
        await self.bus.publish_raw(subject, payload, headers)

    async def dead_letters(self) -> list[DeadLetter]:
        """``bus.dead_letters``."""
        return list(self.bus.dead_letters)


class NatsEventHarness:
    """An :class:`EventHarness` over a connected :class:`~adapters.nats_events.NatsConnection`
    (real time; raw messages are published with the connection's own client)."""

    def __init__(self, connection: NatsConnection) -> None:
        from adapters.nats_events import NatsPublisher, NatsSubscriber

        self.connection = connection
        self.publisher: Publisher = NatsPublisher(connection)
        self._subscriber = NatsSubscriber(connection)
        self.subscriber: Subscriber = self._subscriber
        self.capabilities = frozenset({RAW_MESSAGES})

    @property
    def max_payload(self) -> int:
        """The server's ``max_payload``, as the connected client read it."""
        return self.connection.max_payload

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = ""
    ) -> None:
        """Poll ``predicate`` every 5 ms up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
            await asyncio.sleep(0.005)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of real time pass."""
        await asyncio.sleep(seconds)

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def inject_raw(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None
    ) -> None:
        """Publish to ``<prefix>.<subject>`` with the raw client and await the PubAck."""
        prefix = self.connection.settings.prefix
        await self.connection.jetstream.publish(
            f"{prefix}.{subject}", payload, headers=dict(headers) if headers else None
        )

    async def dead_letters(self) -> list[DeadLetter]:
        """Read the dead-letter stream."""
        return await self._subscriber.dead_letters()


@contextlib.asynccontextmanager
async def nats_event_harness(
    url: str, *, name: str, config: Mapping[str, str] | None = None, logger: Logger | None = None
) -> AsyncIterator[NatsEventHarness]:
    """A :class:`NatsEventHarness` isolated by ``name``: its own stream (``name``),
    prefixes and dead-letter stream, deleted afterwards. Fast test settings."""
    from adapters.memory import InMemoryConfig
    from adapters.nats_events import NatsConnection

    values = {
        "NATS_URL": url,
        "EVENTS_STREAM": name,
        "EVENTS_PREFIX": name.lower(),
        "EVENTS_DEAD_PREFIX": f"{name.lower()}-dead",
        "EVENTS_STORAGE": "memory",
        "EVENTS_PUBLISH_TIMEOUT_S": "2",
        "EVENTS_PUBLISH_BACKOFF_S": "0.05",
        "EVENTS_PULL_EXPIRES_S": "1",
        **(config or {}),
    }
    connection = NatsConnection.from_config(InMemoryConfig(values), logger=logger)
    await connection.connect()
    try:
        yield NatsEventHarness(connection)
    finally:
        await connection.close(timeout=2.0)
        cleanup = NatsConnection.from_config(InMemoryConfig(values))
        await cleanup.connect()
        for stream in (connection.settings.stream, connection.settings.dead_stream):
            with contextlib.suppress(Exception):  # best-effort cleanup of a test stream
                await cleanup.jetstream.delete_stream(stream)
        await cleanup.close(timeout=1.0)


# --- helpers ------------------------------------------------------------------------


def _event(n: int, *, type_: str = "orders.placed", **data: Any) -> Event:
    return Event(type=type_, source="contract", organization_id="org-1", data={"n": n, **data})


class Recorder:
    """A handler that records each delivery: the event, the context, the attempt."""

    def __init__(self, behaviour: Callable[[Event, int], Any] | None = None) -> None:
        self.deliveries: list[tuple[Event, dict[str, Any]]] = []
        self._behaviour = behaviour

    async def __call__(self, event: Event) -> None:
        context = dict(current_context())
        self.deliveries.append((event, context))
        if self._behaviour is not None:
            result = self._behaviour(event, int(context.get("attempt", 0)))
            if asyncio.iscoroutine(result):
                await result

    @property
    def events(self) -> list[Event]:
        """Events in delivery order (redeliveries included)."""
        return [e for e, _ in self.deliveries]

    def ids(self) -> set[str]:
        """Ids of every event delivered at least once."""
        return {e.id for e, _ in self.deliveries}

    def count(self, event_id: str) -> int:
        """How many times ``event_id`` was delivered."""
        return sum(1 for e, _ in self.deliveries if e.id == event_id)

    def attempts(self, event_id: str) -> list[int]:
        """The attempt numbers ``event_id`` was delivered with."""
        return [c["attempt"] for e, c in self.deliveries if e.id == event_id]


async def _dead_letters(h: EventHarness, count: int, *, timeout: float = 10.0) -> list[DeadLetter]:
    deadline = time.monotonic() + timeout
    while True:
        letters = await h.dead_letters()
        if len(letters) >= count:
            return letters
        if time.monotonic() >= deadline:
            raise AssertionError(f"expected {count} dead letters within {timeout} s: {letters}")
        await h.advance(0.0)
        await asyncio.sleep(0.01)


async def _stop_all(subscriptions: Sequence[Subscription]) -> None:
    await asyncio.gather(*(s.stop(5.0) for s in subscriptions))


class _Boom(BaseException):
    """A BaseException that is neither Exception nor a cancellation."""


class _Unprintable(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


async def _hang_until_cancelled() -> None:
    await asyncio.Event().wait()


def _sizes(message: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", message)]


class EventContract:
    """Contract of :class:`ports.events.Publisher` and :class:`ports.events.Subscriber`.

    Needs an async fixture ``event_harness`` yielding an :class:`EventHarness`
    (``@pytest_asyncio.fixture``). The tests carry their own asyncio mark, so the
    suite runs under pytest-asyncio's default strict mode with no configuration.
    """

    pytestmark = pytest.mark.asyncio

    # -- publishing -------------------------------------------------------------------

    async def test_implements_the_ports(self, event_harness: EventHarness) -> None:
        """The publisher and subscriber implement the port protocols."""
        assert isinstance(event_harness.publisher, Publisher)
        assert isinstance(event_harness.subscriber, Subscriber)

    async def test_publish_acks_with_increasing_sequences(
        self, event_harness: EventHarness
    ) -> None:
        """publish returns a PublishAck per event, sequences increasing, not duplicate."""
        h = event_harness
        acks = [await h.publisher.publish(_event(i)) for i in range(3)]
        assert [a.duplicate for a in acks] == [False, False, False]
        assert acks[0].sequence < acks[1].sequence < acks[2].sequence
        assert len({a.stream for a in acks}) == 1

    async def test_publish_many_acks_in_order(self, event_harness: EventHarness) -> None:
        """publish_many returns one ack per event in order; an empty batch returns []."""
        h = event_harness
        acks = await h.publisher.publish_many([_event(i) for i in range(50)])
        assert len(acks) == 50
        assert [a.sequence for a in acks] == sorted(a.sequence for a in acks)
        assert len({a.sequence for a in acks}) == 50
        assert await h.publisher.publish_many([]) == []

    async def test_invalid_subjects_and_names_are_bad_requests(
        self, event_harness: EventHarness
    ) -> None:
        """Empty tokens, whitespace, wildcards in publish, bad durables -> BadRequest."""
        h = event_harness
        for subject in ("a..b", "a b", "a.*", "a.>", "", ".a"):
            with pytest.raises(BadRequest):
                await h.publisher.publish(_event(0), subject=subject)
        for subject in ("a.>.b", "a.b*", "a..b"):
            with pytest.raises(BadRequest):
                await h.subscriber.subscribe(subject, Recorder(), durable="d")
        for durable in ("a.b", "", "a b", "a*"):
            with pytest.raises(BadRequest):
                await h.subscriber.subscribe("a.b", Recorder(), durable=durable)
        with pytest.raises(BadRequest):
            await h.subscriber.subscribe("a.b", Recorder(), durable="d", max_deliver=0)
        with pytest.raises(BadRequest):
            await h.subscriber.subscribe("a.b", Recorder(), durable="d", concurrency=0)

    # -- watermill's universal cases -----------------------------------------------------

    async def test_payload_and_metadata_arrive_intact(self, event_harness: EventHarness) -> None:
        """Every field of each event (id, type, source, org, timestamp, data) arrives equal."""
        h = event_harness
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="intact")
        sent = [
            _event(0, text="héllo wörld ✓ 🚀", nested={"list": [1, 2.5, None, True, "x"]}),
            _event(1, big=2**70, negative=-(2**63), tiny=5e-324, quote='"%\n\t'),
            Event(
                type="orders.placed",
                source="source with spaces/and%percent",
                organization_id="org ✓",
                id="id with spaces and ünïcode",
                data={},
            ),
        ]
        for event in sent:
            await h.publisher.publish(event)
        await h.wait_until(lambda: len(recorder.deliveries) >= 3, what="3 deliveries")
        await sub.stop()
        assert recorder.events == sent

    async def test_concurrent_subscribers_use_their_concurrency(
        self, event_harness: EventHarness
    ) -> None:
        """With concurrency=8, several handlers run at once and every event is handled."""
        h = event_harness
        gate = asyncio.Event()
        running = 0
        peak = 0
        done: set[str] = set()

        async def handler(event: Event) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if running >= 4:
                gate.set()
            await gate.wait()
            running -= 1
            done.add(event.id)

        sent = [_event(i) for i in range(20)]
        await h.publisher.publish_many(sent)
        sub = await h.subscriber.subscribe("orders.>", handler, durable="conc", concurrency=8)
        await h.wait_until(lambda: len(done) == 20, what="20 handled")
        await sub.stop()
        assert peak >= 4
        assert done == {e.id for e in sent}

    async def test_many_subjects_at_once(self, event_harness: EventHarness) -> None:
        """Five subjects published concurrently each reach exactly their subscriber."""
        h = event_harness
        subjects = [f"topic{i}.created" for i in range(5)]
        recorders = {s: Recorder() for s in subjects}
        subs = [
            await h.subscriber.subscribe(s, recorders[s], durable=f"many{i}")
            for i, s in enumerate(subjects)
        ]
        sent = {s: [_event(i, type_=s) for i in range(10)] for s in subjects}
        await asyncio.gather(*(h.publisher.publish_many(sent[s]) for s in subjects))
        await h.wait_until(
            lambda: all(len(r.deliveries) >= 10 for r in recorders.values()), what="10 each"
        )
        await _stop_all(subs)
        for s in subjects:
            assert recorders[s].events == sent[s]

    async def test_resend_on_error(self, event_harness: EventHarness) -> None:
        """A handler that fails gets the same event again, on attempt 2."""
        h = event_harness

        def fail_first(event: Event, attempt: int) -> None:
            if attempt == 1:
                raise RuntimeError("transient")

        recorder = Recorder(fail_first)
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="resend", backoff=(0.05,))
        sent = [_event(i) for i in range(5)]
        await h.publisher.publish_many(sent)
        await h.wait_until(lambda: len(recorder.deliveries) >= 5, what="first attempts")
        await h.advance(0.05)
        await h.wait_until(lambda: len(recorder.deliveries) >= 10, what="second attempts")
        await sub.stop()
        for event in sent:
            assert recorder.attempts(event.id) == [1, 2]

    async def test_continue_after_errors(self, event_harness: EventHarness) -> None:
        """Events failing a few times do not hold up the others; all get handled."""
        h = event_harness
        failing = {0, 3}

        def fail_twice(event: Event, attempt: int) -> None:
            if event.data["n"] in failing and attempt <= 2:
                raise RuntimeError("not yet")

        recorder = Recorder(fail_twice)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="cont", backoff=(0.05,), max_deliver=5
        )
        sent = [_event(i) for i in range(8)]
        await h.publisher.publish_many(sent)
        ok = {e.id for e in sent if e.data["n"] not in failing}
        await h.wait_until(lambda: ok <= recorder.ids(), what="healthy events handled")
        for _ in range(2):
            await h.advance(0.05)
        await h.wait_until(
            lambda: all(recorder.count(e.id) == 3 for e in sent if e.data["n"] in failing),
            what="failing events handled on attempt 3",
        )
        await sub.stop()
        assert recorder.ids() == {e.id for e in sent}
        assert await h.dead_letters() == []

    async def test_continue_after_close_and_reopen(self, event_harness: EventHarness) -> None:
        """Stopping a subscription mid-stream and subscribing the durable again loses
        nothing (duplicates allowed)."""
        h = event_harness
        recorder = Recorder()
        first = [_event(i) for i in range(30)]
        await h.publisher.publish_many(first)
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="reopen")
        await h.wait_until(lambda: len(recorder.deliveries) >= 10, what="some handled")
        await sub.stop()
        second = [_event(i) for i in range(30, 60)]
        await h.publisher.publish_many(second)
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="reopen")
        wanted = {e.id for e in first + second}
        await h.wait_until(lambda: wanted <= recorder.ids(), what="all 60 handled")
        await sub.stop()

    async def test_concurrent_close(self, event_harness: EventHarness) -> None:
        """Many subscriptions stopped at once (each twice, concurrently) all stop;
        the subscriber keeps working afterwards."""
        h = event_harness
        subs = [
            await h.subscriber.subscribe("orders.>", Recorder(), durable=f"close{i}")
            for i in range(5)
        ]
        await h.publisher.publish_many([_event(i) for i in range(10)])
        await asyncio.gather(*(s.stop(5.0) for s in subs), *(s.stop(5.0) for s in subs))
        await _stop_all(subs)  # and again, after the fact
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="close-after")
        await h.wait_until(lambda: len(recorder.deliveries) >= 10, what="new durable reads")
        await sub.stop()

    async def test_subject_isolation(self, event_harness: EventHarness) -> None:
        """A subscription sees only its subject: an event on another never arrives."""
        h = event_harness
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.placed", recorder, durable="iso")
        await h.publisher.publish(_event(0, type_="orders.cancelled"))
        await h.publisher.publish(_event(1, type_="payments.placed"))
        marker = _event(2, type_="orders.placed")
        await h.publisher.publish(marker)
        await h.wait_until(lambda: marker.id in recorder.ids(), what="marker")
        await sub.stop()
        assert recorder.events == [marker]

    async def test_consumer_groups_fan_out_and_share(self, event_harness: EventHarness) -> None:
        """Two durables each see every event; two members of one durable split them
        (each event handled by exactly one member)."""
        h = event_harness
        a1, a2, b = Recorder(), Recorder(), Recorder()
        subs = [
            await h.subscriber.subscribe("orders.>", a1, durable="group-a"),
            await h.subscriber.subscribe("orders.>", a2, durable="group-a"),
            await h.subscriber.subscribe("orders.>", b, durable="group-b"),
        ]
        sent = [_event(i) for i in range(40)]
        await h.publisher.publish_many(sent)
        ids = {e.id for e in sent}
        await h.wait_until(lambda: ids <= (a1.ids() | a2.ids()) and ids <= b.ids(), what="all")
        await _stop_all(subs)
        assert not (a1.ids() & a2.ids())
        assert len(a1.deliveries) + len(a2.deliveries) == 40
        assert len(b.deliveries) == 40

    async def test_new_durable_receives_old_events(self, event_harness: EventHarness) -> None:
        """A durable created after events were published starts from the first one."""
        h = event_harness
        sent = [_event(i) for i in range(5)]
        await h.publisher.publish_many(sent)
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="latecomer")
        await h.wait_until(lambda: len(recorder.deliveries) >= 5, what="old events")
        await sub.stop()
        assert recorder.events == sent

    async def test_order_for_a_single_subscriber(self, event_harness: EventHarness) -> None:
        """With concurrency=1 a single subscriber handles events in publish order."""
        h = event_harness
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="order")
        sent = [_event(i) for i in range(100)]
        await h.publisher.publish_many(sent[:50])
        for event in sent[50:]:
            await h.publisher.publish(event)
        await h.wait_until(lambda: len(recorder.deliveries) >= 100, what="100 handled")
        await sub.stop()
        assert [e.data["n"] for e in recorder.events] == list(range(100))

    # -- ours ---------------------------------------------------------------------------

    async def test_same_id_is_stored_once(self, event_harness: EventHarness) -> None:
        """Publishing an id again (alone or in a batch) acks duplicate=True with the
        first sequence; subscribers see it once."""
        h = event_harness
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="dedupe")
        event = _event(0)
        first = await h.publisher.publish(event)
        again = await h.publisher.publish(event)
        batch = await h.publisher.publish_many([event, _event(1)])
        assert first.duplicate is False
        assert again.duplicate is True
        assert again.sequence == first.sequence
        assert batch[0].duplicate is True
        assert batch[1].duplicate is False
        marker = _event(2)
        await h.publisher.publish(marker)
        await h.wait_until(lambda: marker.id in recorder.ids(), what="marker")
        await sub.stop()
        assert recorder.count(event.id) == 1

    async def test_max_deliver_then_dead_letter(self, event_harness: EventHarness) -> None:
        """A handler failing every time gets max_deliver attempts, then a dead letter
        with the event, subject, durable, reason max_deliver and the attempts."""
        h = event_harness

        def always_fail(event: Event, attempt: int) -> None:
            raise ValueError(f"broken {attempt}")

        recorder = Recorder(always_fail)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="dlq", max_deliver=3, backoff=(0.05, 0.1)
        )
        event = _event(0)
        await h.publisher.publish(event)
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="attempt 1")
        await h.advance(0.05)
        await h.wait_until(lambda: len(recorder.deliveries) >= 2, what="attempt 2")
        await h.advance(0.1)
        letters = await _dead_letters(h, 1)
        await sub.stop()
        assert recorder.attempts(event.id) == [1, 2, 3]
        [letter] = letters
        assert letter.reason == "max_deliver"
        assert letter.attempts == 3
        assert letter.durable == "dlq"
        assert letter.subject == "orders.placed"
        assert letter.event == event
        assert letter.error is not None
        assert "broken 3" in letter.error

    async def test_reject_dead_letters_at_once(self, event_harness: EventHarness) -> None:
        """Reject means no redelivery: one attempt, a dead letter with the reason, and
        later events still flow."""
        h = event_harness

        def reject_first(event: Event, attempt: int) -> None:
            if event.data["n"] == 0:
                raise Reject("unknown customer")

        recorder = Recorder(reject_first)
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="rej")
        rejected, fine = _event(0), _event(1)
        await h.publisher.publish_many([rejected, fine])
        await h.wait_until(lambda: fine.id in recorder.ids(), what="next event")
        letters = await _dead_letters(h, 1)
        await sub.stop()
        assert recorder.count(rejected.id) == 1
        [letter] = letters
        assert (letter.reason, letter.attempts, letter.error) == ("rejected", 1, "unknown customer")
        assert letter.event == rejected

    async def test_poison_payload_is_dead_lettered(self, event_harness: EventHarness) -> None:
        """Bytes that are no event go to a dead letter as they were; the subscription
        keeps running."""
        h = event_harness
        if RAW_MESSAGES not in h.capabilities:
            pytest.skip("the adapter cannot put raw bytes on the wire")
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="poison")
        await h.inject_raw("orders.placed", b"\xff\x00 not json", {"ce-specversion": "1.0"})
        await h.inject_raw("orders.placed", b"{}", None)
        fine = _event(1)
        await h.publisher.publish(fine)
        await h.wait_until(lambda: fine.id in recorder.ids(), what="good event after poison")
        letters = await _dead_letters(h, 2)
        await sub.stop()
        assert recorder.events == [fine]
        assert sorted(letter.payload for letter in letters) == [b"{}", b"\xff\x00 not json"]
        assert {letter.reason for letter in letters} == {"undecodable"}
        assert all(letter.event is None for letter in letters)

    async def test_foreign_cloudevent_is_read(self, event_harness: EventHarness) -> None:
        """A binary-mode CloudEvent from another publisher (ce- headers) is delivered."""
        h = event_harness
        if RAW_MESSAGES not in h.capabilities:
            pytest.skip("the adapter cannot put raw bytes on the wire")
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="foreign")
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "ext-1",
            "ce-type": "com.example.order",
            "ce-source": "/external",
            "ce-time": "2030-01-01T12:00:00Z",
            "ce-organizationid": "org-9",
            "ce-requestid": "req-ext",
            "content-type": "application/json; charset=utf-8",
        }
        await h.inject_raw("orders.external", b'{"total": 12.5}', headers)
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="foreign event")
        await sub.stop()
        [(event, context)] = recorder.deliveries
        assert (event.id, event.type, event.source, event.organization_id) == (
            "ext-1",
            "com.example.order",
            "/external",
            "org-9",
        )
        assert event.data == {"total": 12.5}
        assert event.timestamp.isoformat() == "2030-01-01T12:00:00+00:00"
        assert context["request_id"] == "req-ext"

    async def test_wildcards(self, event_harness: EventHarness) -> None:
        """'*' matches exactly one token and '>' one or more at the end."""
        h = event_harness
        star, tail = Recorder(), Recorder()
        subs = [
            await h.subscriber.subscribe("orders.*", star, durable="star"),
            await h.subscriber.subscribe("orders.>", tail, durable="tail"),
        ]
        one = _event(0, type_="orders.placed")
        two = _event(1, type_="orders.placed.eu")
        other = _event(2, type_="payments.placed")
        last = _event(3, type_="orders.done")
        await h.publisher.publish_many([one, two, other, last])
        await h.wait_until(
            lambda: last.id in star.ids() and last.id in tail.ids(), what="last event"
        )
        await _stop_all(subs)
        assert star.events == [one, last]
        assert tail.events == [one, two, last]

    async def test_publish_to_an_explicit_subject(self, event_harness: EventHarness) -> None:
        """subject= overrides event.type for routing; the event keeps its type."""
        h = event_harness
        recorder = Recorder()
        sub = await h.subscriber.subscribe("audit.>", recorder, durable="explicit")
        event = _event(0, type_="orders.placed")
        await h.publisher.publish(event, subject="audit.orders")
        await h.publisher.publish_many([_event(1)], subject="audit.batch")
        await h.wait_until(lambda: len(recorder.deliveries) >= 2, what="both")
        await sub.stop()
        assert recorder.events[0] == event
        assert [e.type for e in recorder.events] == ["orders.placed", "orders.placed"]

    async def test_context_reaches_the_handler(self, event_harness: EventHarness) -> None:
        """The handler's context holds the publisher's request_id, event_id, event_type,
        organization_id and the attempt; the publisher's context does not leak."""
        h = event_harness

        def fail_once(event: Event, attempt: int) -> None:
            if attempt == 1:
                raise RuntimeError("again")

        recorder = Recorder(fail_once)
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="ctx", backoff=(0.05,))
        event = _event(0)
        with bind_context(request_id="req-42", user="someone"):
            await h.publisher.publish(event)
        untraced = _event(1)
        await h.publisher.publish(untraced)
        await h.wait_until(lambda: len(recorder.deliveries) >= 2, what="first attempts")
        await h.advance(0.05)
        await h.wait_until(lambda: len(recorder.deliveries) >= 4, what="second attempts")
        await sub.stop()
        contexts = [c for e, c in recorder.deliveries if e.id == event.id]
        assert contexts[0] == {
            "request_id": "req-42",
            "event_id": event.id,
            "event_type": "orders.placed",
            "organization_id": "org-1",
            "attempt": 1,
        }
        assert contexts[1]["attempt"] == 2
        assert contexts[1]["request_id"] == "req-42"
        assert all("request_id" not in c for e, c in recorder.deliveries if e.id == untraced.id)

    async def test_backoff_delays_redelivery(self, event_harness: EventHarness) -> None:
        """A failed event comes back no sooner than its backoff delay."""
        h = event_harness
        times: list[float] = []

        def fail_first(event: Event, attempt: int) -> None:
            times.append(h.monotonic())
            if attempt == 1:
                raise RuntimeError("later")

        sub = await h.subscriber.subscribe(
            "orders.>", Recorder(fail_first), durable="backoff", backoff=(0.3,)
        )
        await h.publisher.publish(_event(0))
        await h.wait_until(lambda: len(times) >= 1, what="attempt 1")
        if FAKE_TIME in h.capabilities:
            await h.advance(0.29)
            assert len(times) == 1
            await h.advance(0.01)
        await h.wait_until(lambda: len(times) >= 2, what="attempt 2")
        await sub.stop()
        assert times[1] - times[0] >= 0.3 * 0.95

    async def test_durable_is_bound_to_its_subject(self, event_harness: EventHarness) -> None:
        """Subscribing a durable to a different subject than it consumes -> Conflict."""
        h = event_harness
        sub = await h.subscriber.subscribe("orders.>", Recorder(), durable="bound")
        with pytest.raises(Conflict):
            await h.subscriber.subscribe("payments.>", Recorder(), durable="bound")
        await sub.stop()

    async def test_long_handler_is_kept_alive(self, event_harness: EventHarness) -> None:
        """A handler running for 3x ack_wait is not redelivered under itself."""
        h = event_harness
        release = asyncio.Event()

        async def slow(event: Event, attempt: int) -> None:
            if event.data["n"] == 0:
                await release.wait()

        recorder = Recorder(slow)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="slow", ack_wait=0.4, concurrency=2
        )
        slow_event = _event(0)
        await h.publisher.publish(slow_event)
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="slow handler started")
        await h.advance(1.2)
        release.set()
        marker = _event(1)
        await h.publisher.publish(marker)
        await h.wait_until(lambda: marker.id in recorder.ids(), what="marker")
        await sub.stop()
        assert recorder.attempts(slow_event.id) == [1]

    async def test_stop_lets_in_flight_handlers_finish(self, event_harness: EventHarness) -> None:
        """stop() waits for the running handler, which acks: the next member of the
        durable does not get that event again, but gets the ones not yet started."""
        h = event_harness
        release = asyncio.Event()
        finished: list[int] = []

        async def first_blocks(event: Event, attempt: int) -> None:
            if event.data["n"] == 0:
                await release.wait()
            finished.append(event.data["n"])

        recorder = Recorder(first_blocks)
        sent = [_event(i) for i in range(5)]
        await h.publisher.publish_many(sent)
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="drain")
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="first started")
        stopping = asyncio.ensure_future(sub.stop(10.0))
        await h.advance(0.0)
        release.set()
        await stopping
        assert 0 in finished
        after = Recorder()
        sub = await h.subscriber.subscribe("orders.>", after, durable="drain")
        rest = {e.id for e in sent} - recorder.ids()
        await h.wait_until(lambda: rest <= after.ids(), what="the rest")
        marker = _event(9)
        await h.publisher.publish(marker)
        await h.wait_until(lambda: marker.id in after.ids(), what="marker")
        await sub.stop()
        assert sent[0].id not in after.ids()

    async def test_killed_handler_means_redelivery(self, event_harness: EventHarness) -> None:
        """A handler still running when stop() times out is cancelled; its event is
        delivered again to the durable's next member (at-least-once), and the cut-short
        run used up no attempt (max_deliver=1: handled, not dead-lettered)."""
        h = event_harness
        hang = asyncio.Event()
        done: list[str] = []

        async def hangs_first_time(event: Event, attempt: int) -> None:
            if recorder.count(event.id) == 1:
                await hang.wait()
            done.append(event.id)

        recorder = Recorder(hangs_first_time)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="killed", ack_wait=30, max_deliver=1
        )
        event = _event(0)
        await h.publisher.publish(event)
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="handler started")
        await sub.stop(timeout=0.1)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="killed", ack_wait=30, max_deliver=1
        )
        await h.wait_until(lambda: event.id in done, what="redelivery handled")
        await sub.stop()
        assert recorder.attempts(event.id) == [1, 1]
        assert await h.dead_letters() == []

    # -- events that survive real operations ------------------------------------------

    async def test_running_until_stopped(self, event_harness: EventHarness) -> None:
        """A subscription is a Subscription, running after subscribe, not after stop."""
        h = event_harness
        sub = await h.subscriber.subscribe("orders.>", Recorder(), durable="run")
        assert isinstance(sub, Subscription)
        assert sub.running is True
        await sub.stop()
        assert sub.running is False

    async def test_restarts_use_up_no_attempts(self, event_harness: EventHarness) -> None:
        """Stopping and resubscribing a durable four times, each time killing a running
        handler with a backlog waiting, dead-letters nothing (max_deliver=2): every
        event is handled and every first handling is attempt 1."""
        h = event_harness
        sent = [_event(i) for i in range(40)]
        victim = sent[0]
        hanging = True
        done: set[str] = set()

        async def victim_hangs(event: Event, attempt: int) -> None:
            if hanging and event.id == victim.id:
                await _hang_until_cancelled()
            done.add(event.id)

        recorder = Recorder(victim_hangs)
        await h.publisher.publish_many(sent)
        for round_ in range(1, 5):
            sub = await h.subscriber.subscribe(
                "orders.>", recorder, durable="restart", max_deliver=2, backoff=(0.05,)
            )
            await h.wait_until(
                lambda n=round_: recorder.count(victim.id) >= n,  # type: ignore[misc]
                what=f"victim running in round {round_}",
            )
            await h.publisher.publish(_event(100 + round_))
            await sub.stop(timeout=0.05)
            assert victim.id not in done
        hanging = False
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="restart", max_deliver=2, backoff=(0.05,)
        )
        wanted = {e.id for e in sent}
        await h.wait_until(lambda: wanted <= done, what="every event handled")
        await sub.stop()
        assert await h.dead_letters() == []
        for event in sent:
            assert recorder.attempts(event.id)[0] == 1, event.data
        assert set(recorder.attempts(victim.id)) == {1}
        assert recorder.count(victim.id) == 5

    async def test_handler_timeout_cancels_and_redelivers(
        self, event_harness: EventHarness
    ) -> None:
        """A handler still running after handler_timeout is cancelled: a failed attempt,
        redelivered after the backoff as attempt 2 and handled."""
        h = event_harness
        cancelled: list[int] = []
        done: list[int] = []

        async def hang_first(event: Event, attempt: int) -> None:
            if attempt == 1:
                try:
                    await _hang_until_cancelled()
                except asyncio.CancelledError:
                    cancelled.append(attempt)
                    raise
            done.append(attempt)

        recorder = Recorder(hang_first)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="timeout", handler_timeout=0.2, backoff=(0.05,)
        )
        event = _event(0)
        await h.publisher.publish(event)
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="attempt 1 started")
        if FAKE_TIME in h.capabilities:
            await h.advance(0.19)
            assert cancelled == []
        await h.advance(0.2)
        await h.wait_until(lambda: cancelled == [1], what="attempt 1 cancelled")
        await h.advance(0.05)
        await h.wait_until(lambda: done == [2], what="attempt 2 handled")
        assert sub.running
        await sub.stop()
        assert recorder.attempts(event.id) == [1, 2]
        assert await h.dead_letters() == []

    async def test_a_handler_swallowing_its_timeout_still_failed_the_attempt(
        self, event_harness: EventHarness
    ) -> None:
        """A handler that catches the cancellation of its handler_timeout and returns
        normally has still run too long: a failed attempt, redelivered as attempt 2
        (never acknowledged as if it had kept its time)."""
        h = event_harness
        swallowed: list[int] = []

        async def swallow_first(event: Event, attempt: int) -> None:
            if attempt == 1:
                try:
                    await _hang_until_cancelled()
                except asyncio.CancelledError:
                    swallowed.append(attempt)

        recorder = Recorder(swallow_first)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="timeout-swallow", handler_timeout=0.2, backoff=(0.05,)
        )
        event = _event(0)
        await h.publisher.publish(event)
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="attempt 1 started")
        await h.advance(0.2)
        await h.wait_until(lambda: swallowed == [1], what="attempt 1 cut off")
        await h.advance(0.05)
        await h.wait_until(lambda: len(recorder.deliveries) >= 2, what="attempt 2")
        await sub.stop()
        assert recorder.attempts(event.id) == [1, 2]
        assert await h.dead_letters() == []

    async def test_handler_timeout_on_the_last_attempt_dead_letters(
        self, event_harness: EventHarness
    ) -> None:
        """With max_deliver=1, a handler cut off by handler_timeout is dead-lettered,
        the error naming the timeout; later events still flow."""
        h = event_harness

        async def hang_on_first(event: Event, attempt: int) -> None:
            if event.data["n"] == 0:
                await _hang_until_cancelled()

        recorder = Recorder(hang_on_first)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="timeout-dl", handler_timeout=0.1, max_deliver=1
        )
        hung = _event(0)
        await h.publisher.publish(hung)
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="handler started")
        await h.advance(0.1)
        [letter] = await _dead_letters(h, 1)
        later = _event(1)
        await h.publisher.publish(later)
        await h.wait_until(lambda: later.id in recorder.ids(), what="later event")
        await sub.stop()
        assert (letter.reason, letter.attempts) == ("max_deliver", 1)
        assert letter.event == hung
        assert letter.error is not None
        assert "handler_timeout" in letter.error
        assert recorder.attempts(hung.id) == [1]

    async def test_invalid_handler_timeout_is_a_bad_request(
        self, event_harness: EventHarness
    ) -> None:
        """handler_timeout must be None or a finite number of seconds above 0."""
        h = event_harness
        for bad in (0, -1.0, float("inf"), float("nan")):
            with pytest.raises(BadRequest):
                await h.subscriber.subscribe(
                    "orders.>", Recorder(), durable="bad-timeout", handler_timeout=bad
                )

    async def test_broken_handlers_are_failed_attempts(self, event_harness: EventHarness) -> None:
        """A handler raising its own CancelledError, an exception whose str() raises, or
        a BaseException subclass fails that attempt only: each event is redelivered
        and handled, the subscription keeps running, and later events flow."""
        h = event_harness
        errors: dict[int, type[BaseException]] = {
            0: asyncio.CancelledError,
            1: _Unprintable,
            2: _Boom,
        }

        def break_first(event: Event, attempt: int) -> None:
            error = errors.get(event.data["n"])
            if error is not None and attempt == 1:
                raise error()

        recorder = Recorder(break_first)
        sub = await h.subscriber.subscribe(
            "orders.>", recorder, durable="broken", backoff=(0.05,), max_deliver=3
        )
        sent = [_event(i) for i in range(4)]
        await h.publisher.publish_many(sent)
        await h.wait_until(lambda: len(recorder.deliveries) >= 4, what="first attempts")
        assert sub.running
        await h.advance(0.05)
        await h.wait_until(lambda: len(recorder.deliveries) >= 7, what="second attempts")
        later = _event(9)
        await h.publisher.publish(later)
        await h.wait_until(lambda: later.id in recorder.ids(), what="later event")
        assert sub.running
        await sub.stop()
        for event in sent[:3]:
            assert recorder.attempts(event.id) == [1, 2], event.data
        assert recorder.attempts(sent[3].id) == [1]
        assert await h.dead_letters() == []

    async def test_unprintable_failure_is_dead_lettered(self, event_harness: EventHarness) -> None:
        """An exception whose str() raises, on the last attempt, still gives a dead letter
        whose error names its type."""
        h = event_harness

        def unprintable(event: Event, attempt: int) -> None:
            raise _Unprintable()

        sub = await h.subscriber.subscribe(
            "orders.>", Recorder(unprintable), durable="unprintable", max_deliver=1
        )
        event = _event(0)
        await h.publisher.publish(event)
        [letter] = await _dead_letters(h, 1)
        assert sub.running
        await sub.stop()
        assert (letter.reason, letter.attempts, letter.event) == ("max_deliver", 1, event)
        assert letter.error is not None
        assert "_Unprintable" in letter.error

    async def test_event_over_max_payload_is_refused(self, event_harness: EventHarness) -> None:
        """An event whose body is 10 bytes under max_payload but whose headers push it
        over is a BadRequest naming both sizes; nothing is stored, and publishing and
        consuming go on."""
        h = event_harness
        limit = h.max_payload
        filler = limit - 10 - len(b'{"x":""}')
        big = Event(
            type="orders.placed",
            source="contract",
            organization_id="org-1",
            data={"x": "a" * filler},
        )
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="big")
        for attempt in (h.publisher.publish(big), h.publisher.publish_many([big])):
            with pytest.raises(BadRequest) as caught:
                await attempt
            sizes = _sizes(caught.value.message)
            assert limit in sizes, caught.value.message
            assert any(size > limit for size in sizes), caught.value.message
        marker = _event(1)
        assert (await h.publisher.publish(marker)).duplicate is False
        await h.wait_until(lambda: marker.id in recorder.ids(), what="marker after refusal")
        await sub.stop()
        assert recorder.events == [marker]

    async def test_publish_many_stores_none_of_an_invalid_batch(
        self, event_harness: EventHarness
    ) -> None:
        """A batch holding one invalid event (a bad subject, or one over max_payload)
        is refused whole: none of its events is stored."""
        h = event_harness
        recorder = Recorder()
        sub = await h.subscriber.subscribe("orders.>", recorder, durable="batch")
        oversize = Event(
            type="orders.placed",
            source="contract",
            organization_id="org-1",
            data={"x": "a" * h.max_payload},
        )
        for invalid in (_event(1, type_="orders..placed"), oversize):
            with pytest.raises(BadRequest):
                await h.publisher.publish_many([_event(0), invalid, _event(2)])
        marker = _event(3)
        await h.publisher.publish(marker)
        await h.wait_until(lambda: marker.id in recorder.ids(), what="marker")
        await sub.stop()
        assert recorder.events == [marker]

    async def test_handler_context_comes_from_the_event_alone(
        self, event_harness: EventHarness
    ) -> None:
        """A subscription made inside bind_context(request_id="outer") gives its handler
        no request_id (nor anything else of the caller's) for an event without one."""
        h = event_harness
        recorder = Recorder()
        with bind_context(request_id="outer", user="someone"):
            sub = await h.subscriber.subscribe("orders.>", recorder, durable="ctx-alone")
        event = _event(0)
        await h.publisher.publish(event)
        await h.wait_until(lambda: len(recorder.deliveries) >= 1, what="delivery")
        await sub.stop()
        [(_, context)] = recorder.deliveries
        assert context.get("request_id") is None
        assert "user" not in context
        assert context["event_id"] == event.id

    async def test_each_handler_gets_its_own_data(self, event_harness: EventHarness) -> None:
        """A handler that mutates event.data changes nothing that a redelivery, another
        durable's handler or the publisher sees."""
        h = event_harness
        seen: list[str] = []

        def mutate(event: Event, attempt: int) -> None:
            seen.append(json.dumps(event.data, sort_keys=True))
            data = event.data
            if isinstance(data, dict):
                data["n"] = -1
                data["nested"]["items"].append("mutated")
            if attempt == 1:
                raise RuntimeError("once more")

        event = _event(0, nested={"items": [1, 2]})
        original = json.dumps(event.data, sort_keys=True)
        first = Recorder(mutate)
        sub_a = await h.subscriber.subscribe("orders.>", first, durable="copy-a", backoff=(0.05,))
        await h.publisher.publish(event)
        await h.wait_until(lambda: len(seen) >= 1, what="first handler ran")
        second = Recorder()
        sub_b = await h.subscriber.subscribe("orders.>", second, durable="copy-b")
        await h.wait_until(lambda: len(second.deliveries) >= 1, what="second durable")
        await h.advance(0.05)
        await h.wait_until(lambda: len(seen) >= 2, what="redelivery")
        await _stop_all([sub_a, sub_b])
        assert seen == [original, original]
        assert json.dumps(second.events[0].data, sort_keys=True) == original
        assert json.dumps(event.data, sort_keys=True) == original
