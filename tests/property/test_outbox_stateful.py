"""A hypothesis state machine drives SqlOutbox + OutboxRelay + Inbox on the SQLite fake
and the in-memory bus with commits, rollbacks, relay crashes between publishing and
marking, restarts, redeliveries and handler failures, and checks it against a model:
the stream holds exactly the committed events, each once, in commit order; every
handled event's effect is applied exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from adapters.memory import InMemoryEventBus, SqliteDatabase
from adapters.outbox import Inbox, OutboxRelay, SqlOutbox, install
from domain_errors import ServiceUnavailable
from ports.database import Transaction
from ports.events import Event, Handler, PublishAck
from testing.fakes import FakeClock, RecordingLogger


class Crashing:
    """The bus as a Publisher that can die right after the broker stored a batch."""

    def __init__(self, bus: InMemoryEventBus) -> None:
        self.bus = bus
        self.crash = False

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        return (await self.publish_many([event], subject=subject))[0]

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        acks = await self.bus.publish_many(events, subject=subject)
        if self.crash:
            raise ServiceUnavailable("relay died between publish and mark")
        return acks


class OutboxMachine(RuleBasedStateMachine):
    """The model: the committed events in commit order, and the events handled."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.db = SqliteDatabase()
        self.run(self.db.connect())
        self.run(install(self.db, logger=RecordingLogger()))
        self.run(self.db.execute("CREATE TABLE effects (event_id TEXT PRIMARY KEY, n BIGINT)"))
        self.bus = InMemoryEventBus(clock=self.clock, duplicate_window=3600)
        self.publisher = Crashing(self.bus)
        self.outbox = SqlOutbox(self.db, clock=self.clock)
        self.relay = self.new_relay()
        self.handler = self.new_handler()
        self.committed: list[str] = []
        self.handled: set[str] = set()
        self.fail_next = False
        self.counter = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def new_relay(self) -> OutboxRelay:
        return OutboxRelay(
            self.db, self.publisher, logger=RecordingLogger(), clock=self.clock, batch_size=3
        )

    def new_handler(self) -> Handler:
        async def apply(event: Event, tx: Transaction) -> None:
            await tx.execute(
                "INSERT INTO effects (event_id, n) VALUES (%s, 1)"
                " ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1",
                (event.id,),
            )
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("handler failed after writing")

        return Inbox(self.db, clock=self.clock).idempotent(apply, durable="effects")

    def events(self, n: int) -> list[Event]:
        made = []
        for _ in range(n):
            self.counter += 1
            made.append(
                Event(
                    type="orders.placed", source="m", organization_id="o", data={"n": self.counter}
                )
            )
        return made

    async def write(self, events: list[Event], *, commit: bool) -> None:
        async with self.db.transaction() as tx:
            for e in events:
                await self.outbox.add(tx, e)
            if not commit:
                raise RuntimeError("rolled back")

    # -- rules --------------------------------------------------------------------------

    @rule(n=st.integers(1, 4))
    def commit(self, n: int) -> None:
        events = self.events(n)
        self.run(self.write(events, commit=True))
        self.committed.extend(e.id for e in events)

    @rule(n=st.integers(1, 3))
    def roll_back(self, n: int) -> None:
        with contextlib.suppress(RuntimeError):
            self.run(self.write(self.events(n), commit=False))

    @rule()
    def relay_runs(self) -> None:
        self.run(self.relay.run_once())

    @rule()
    def relay_crashes_between_publish_and_mark(self) -> None:
        self.publisher.crash = True
        try:
            self.run(self.relay.run_once())
        except ServiceUnavailable:
            pass
        finally:
            self.publisher.crash = False

    @rule()
    def restart(self) -> None:
        self.relay = self.new_relay()
        self.handler = self.new_handler()

    @precondition(lambda self: bool(self.bus.published))
    @rule(data=st.data(), fail=st.booleans())
    def deliver(self, data: st.DataObject, fail: bool) -> None:
        """Deliver any stored event (again): a redelivery, or a first delivery."""
        event = data.draw(st.sampled_from(self.bus.published))
        self.fail_next = fail
        try:
            self.run(self.handler(event))
        except RuntimeError:
            assert fail
        else:
            self.handled.add(event.id)
        finally:
            self.fail_next = False

    @rule(seconds=st.floats(0, 30))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- the model ----------------------------------------------------------------------

    @invariant()
    def stream_holds_committed_events_once_in_order(self) -> None:
        ids = [e.id for e in self.bus.published]
        assert len(ids) == len(set(ids))
        assert ids == self.committed[: len(ids)]

    @invariant()
    def effects_applied_exactly_once(self) -> None:
        rows = self.run(self.db.fetch_all("SELECT event_id, n FROM effects"))
        assert {r["event_id"]: r["n"] for r in rows} == dict.fromkeys(self.handled, 1)

    def teardown(self) -> None:
        try:
            self.publisher.crash = False
            self.run(self.relay.run_once())
            assert [e.id for e in self.bus.published] == self.committed
            assert self.run(self.relay.lag()) == 0.0
            self.run(self.bus.close(timeout=1.0))
            self.run(self.db.close())
        finally:
            self.loop.close()


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
