"""A hypothesis state machine drives InMemoryEventBus with random publishes (duplicates
included), subscribes, handler failures, slow handlers, stops (killing what runs) and
clock moves, and checks it against a model: nothing is lost, nothing handled twice
successfully, and in the end every stored event is handled or dead-lettered by every
durable (at-least-once)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from adapters._event_rules import subject_pattern
from adapters.memory import InMemoryEventBus, InMemorySubscription
from ports.context import current_context
from ports.events import Event, Reject
from testing.fakes import FakeClock

DURABLES = {"a": "orders.>", "b": "orders.placed", "c": "*.done"}
SUBJECTS = ["orders.placed", "orders.shipped", "payments.done"]
MAX_DELIVER = 4


class EventBusMachine(RuleBasedStateMachine):
    """Random operations on a bus; the model is the stored log and what each durable
    has resolved (handled successfully, or dead-lettered)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.bus = InMemoryEventBus(clock=self.clock, duplicate_window=60)
        self.stored: list[Event] = []
        self.ids: set[str] = set()
        self.subs: dict[str, list[InMemorySubscription]] = defaultdict(list)
        self.created: set[str] = set()
        self.failures: Counter[str] = Counter()
        self.rejects: set[str] = set()
        self.slow: set[str] = set()
        self.succeeded: Counter[tuple[str, str]] = Counter()
        self.counter = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def handler_for(self, durable: str) -> Any:
        async def handler(event: Event) -> None:
            assert current_context()["event_id"] == event.id
            if event.id in self.slow:
                await self.clock.sleep(2.0)
            if event.id in self.rejects:
                raise Reject("model says no")
            if self.failures[event.id] > 0:
                self.failures[event.id] -= 1
                raise RuntimeError("model failure")
            self.succeeded[(durable, event.id)] += 1

        return handler

    def resolved(self, durable: str) -> set[str]:
        done = {i for (d, i) in self.succeeded if d == durable}
        dead = {dl.event.id for dl in self.bus.dead_letters if dl.durable == durable and dl.event}
        return done | dead

    def matching(self, durable: str) -> set[str]:
        pattern = subject_pattern(DURABLES[durable])
        return {e.id for e in self.stored if pattern.match(e.type)}

    # -- rules --------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.run(self.bus.connect())

    @rule(
        subject=st.sampled_from(SUBJECTS),
        count=st.integers(1, 4),
        dup=st.booleans(),
        slow=st.booleans(),
    )
    def publish(self, subject: str, count: int, dup: bool, slow: bool) -> None:
        fresh = []
        for _ in range(count):
            self.counter += 1
            fresh.append(
                Event(
                    id=f"e{self.counter}",
                    type=subject,
                    source="model",
                    organization_id="org",
                    data={"n": self.counter},
                )
            )
        batch = fresh + (self.stored[-1:] if dup and self.stored else [])
        acks = self.run(self.bus.publish_many(batch))
        for event, ack in zip(batch, acks, strict=True):
            assert ack.duplicate == (event.id in self.ids)
            if not ack.duplicate:
                self.stored.append(event)
                self.ids.add(event.id)
                if slow:
                    self.slow.add(event.id)

    @rule(durable=st.sampled_from(sorted(DURABLES)), concurrency=st.integers(1, 3))
    def subscribe(self, durable: str, concurrency: int) -> None:
        sub = self.run(
            self.bus.subscribe(
                DURABLES[durable],
                self.handler_for(durable),
                durable=durable,
                max_deliver=MAX_DELIVER,
                backoff=(0.5, 1.0),
                concurrency=concurrency,
            )
        )
        self.subs[durable].append(sub)
        self.created.add(durable)

    @precondition(lambda self: any(self.subs.values()))
    @rule(data=st.data(), kill=st.booleans())
    def stop(self, data: st.DataObject, kill: bool) -> None:
        durable = data.draw(st.sampled_from(sorted(d for d, s in self.subs.items() if s)))
        sub = self.subs[durable].pop(data.draw(st.integers(0, len(self.subs[durable]) - 1)))
        if kill:
            # timeout=0 kills handlers mid-event (slow ones sleep on the clock).
            self.run(sub.stop(timeout=0.0))
        else:
            self.run(self.graceful_stop(sub))

    async def graceful_stop(self, sub: InMemorySubscription) -> None:
        """Stop while time moves on, so that in-flight (slow) handlers can finish."""
        stopping = asyncio.ensure_future(sub.stop(timeout=5.0))
        await asyncio.sleep(0)
        while not stopping.done():
            self.clock.advance(2.0)
            await self.bus.run_until_idle(settle=0.0)
        await stopping

    @precondition(lambda self: bool(self.stored))
    @rule(data=st.data(), times=st.integers(1, MAX_DELIVER + 1))
    def fail(self, data: st.DataObject, times: int) -> None:
        event = data.draw(st.sampled_from(self.stored))
        self.failures[event.id] += times

    @precondition(lambda self: bool(self.stored))
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        self.rejects.add(data.draw(st.sampled_from(self.stored)).id)

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    def advance(self, seconds: float) -> None:
        self.run(self.bus.run_until_idle(settle=0.0))
        self.clock.advance(seconds)
        self.run(self.bus.run_until_idle(settle=0.0))

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def stored_once(self) -> None:
        assert [e.id for e in self.bus.published] == [e.id for e in self.stored]

    @invariant()
    def no_success_twice(self) -> None:
        assert all(n == 1 for n in self.succeeded.values())

    @invariant()
    def nothing_lost(self) -> None:
        for durable in self.created:
            outstanding = self.matching(durable) - self.resolved(durable)
            assert self.bus.pending(durable) == len(outstanding), durable
            assert self.resolved(durable) <= self.matching(durable)

    def teardown(self) -> None:
        try:
            # Everyone subscribed, failures cleared, enough time: all resolves.
            self.failures.clear()
            for durable in self.created:
                if not self.subs[durable]:
                    self.subscribe(durable, 1)
            self.slow.clear()
            for _ in range(MAX_DELIVER + 3):
                self.advance(2.0)
            for durable in self.created:
                assert self.resolved(durable) == self.matching(durable), durable
                assert self.bus.pending(durable) == 0
            for letter in self.bus.dead_letters:
                assert letter.event is not None
                assert letter.reason in ("rejected", "max_deliver")
                if letter.reason == "rejected":
                    assert letter.event.id in self.rejects
            self.run(self.bus.close(timeout=1.0))
        finally:
            self.loop.close()


TestEventBusMachine = EventBusMachine.TestCase
TestEventBusMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
