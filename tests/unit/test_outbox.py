"""adapters.outbox on the SQLite fake and the in-memory bus: outbox, relay, inbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from adapters.memory import InMemoryEventBus, SqliteDatabase
from adapters.migrations import status
from adapters.outbox import Inbox, OutboxRelay, SqlOutbox, install
from domain_errors import BadRequest, ServiceUnavailable
from ports.context import bind_context, request_id
from ports.database import Transaction
from ports.events import Event, PublishAck
from ports.outbox import Outbox
from testing.fakes import FakeClock, RecordingLogger


def event(n: int = 0, type_: str = "order.placed", **data: Any) -> Event:
    return Event(type=type_, source="orders", organization_id="org-1", data={"n": n, **data})


class Recorder:
    """A Publisher over the bus that records each call (subject, request_id, ids)."""

    def __init__(self, bus: InMemoryEventBus) -> None:
        self.bus = bus
        self.calls: list[tuple[str | None, str | None, list[str]]] = []
        self.fail_after_publish = 0
        self.published = asyncio.Event()

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        return (await self.publish_many([event], subject=subject))[0]

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        acks = await self.bus.publish_many(events, subject=subject)
        self.calls.append((subject, request_id(), [e.id for e in events]))
        self.published.set()
        if self.fail_after_publish:
            self.fail_after_publish -= 1
            raise ServiceUnavailable("relay died after publishing")
        return acks


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def db() -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase()
    await database.connect()
    await install(database, logger=RecordingLogger())
    yield database
    await database.close()


@pytest.fixture
def bus(clock: FakeClock) -> InMemoryEventBus:
    return InMemoryEventBus(clock=clock)


@pytest.fixture
def publisher(bus: InMemoryEventBus) -> Recorder:
    return Recorder(bus)


@pytest.fixture
def outbox(db: SqliteDatabase, clock: FakeClock) -> SqlOutbox:
    return SqlOutbox(db, clock=clock)


@pytest.fixture
def relay(db: SqliteDatabase, publisher: Recorder, clock: FakeClock) -> OutboxRelay:
    return OutboxRelay(db, publisher, logger=RecordingLogger(), clock=clock, batch_size=3)


async def commit(db: SqliteDatabase, outbox: SqlOutbox, *events: Event) -> None:
    async with db.transaction() as tx:
        for e in events:
            await outbox.add(tx, e)


async def add_then_fail(db: SqliteDatabase | Transaction, outbox: SqlOutbox, e: Event) -> None:
    async with db.transaction() as tx:
        await outbox.add(tx, e)
        raise RuntimeError("rolled back")


async def until_sleeping(clock: FakeClock) -> None:
    """Yield to the loop until a task sleeps on ``clock`` (bounded)."""
    for _ in range(10_000):
        if clock.sleepers:
            return
        await asyncio.sleep(0)
    raise AssertionError("nothing sleeps on the clock")


class TestInstall:
    async def test_creates_tables_as_hexinfra_migrations(self, db: SqliteDatabase) -> None:
        """install records its versions in namespace hexinfra and is idempotent."""
        assert await install(db, logger=RecordingLogger()) == []
        rows = await db.fetch_all(
            "SELECT version FROM hexinfra_migrations WHERE namespace = 'hexinfra'"
        )
        assert [r["version"] for r in rows] == ["0001", "0002"]
        import importlib.resources

        files = importlib.resources.files("adapters.outbox") / "migrations"
        assert [s.state for s in await status(db, files, namespace="hexinfra")] == [
            "applied",
            "applied",
        ]

    def test_sql_outbox_is_the_port(self, outbox: SqlOutbox) -> None:
        """SqlOutbox satisfies ports.outbox.Outbox."""
        assert isinstance(outbox, Outbox)


class TestPublishOnlyCommitted:
    async def test_commit_publishes(
        self, db: SqliteDatabase, outbox: SqlOutbox, relay: OutboxRelay, bus: InMemoryEventBus
    ) -> None:
        """A committed event is published by the relay with its id, exactly as added."""
        e = event(1, text="\x00\ud800é", big=10**30, f=0.1)
        await commit(db, outbox, e)
        assert await relay.run_once() == 1
        assert bus.published == [e]

    async def test_rollback_publishes_nothing(
        self, db: SqliteDatabase, outbox: SqlOutbox, relay: OutboxRelay, bus: InMemoryEventBus
    ) -> None:
        """An event added in a transaction that rolls back is never published."""
        with pytest.raises(RuntimeError):
            await add_then_fail(db, outbox, event(1))
        assert await relay.run_once() == 0
        assert bus.published == []

    async def test_rolled_back_savepoint_drops_its_events(
        self, db: SqliteDatabase, outbox: SqlOutbox, relay: OutboxRelay, bus: InMemoryEventBus
    ) -> None:
        """Events added in a rolled-back savepoint go; the outer transaction's stay."""
        kept = event(1)
        async with db.transaction() as tx:
            await outbox.add(tx, kept)
            with pytest.raises(RuntimeError):
                await add_then_fail(tx, outbox, event(2))
        await relay.run_once()
        assert bus.published == [kept]

    async def test_invalid_subject_refused_before_writing(
        self, db: SqliteDatabase, outbox: SqlOutbox
    ) -> None:
        """A wildcard subject is a BadRequest and writes no row."""
        async with db.transaction() as tx:
            with pytest.raises(BadRequest):
                await outbox.add(tx, event(1), subject="orders.*")
        assert await db.fetch_value("SELECT count(*) FROM hexinfra_outbox") == 0


class TestRelayOrderAndBatches:
    async def test_position_order_in_batches(
        self,
        db: SqliteDatabase,
        outbox: SqlOutbox,
        relay: OutboxRelay,
        bus: InMemoryEventBus,
        publisher: Recorder,
    ) -> None:
        """Rows go out in the order they were added, at most batch_size per call."""
        events = [event(n) for n in range(7)]
        await commit(db, outbox, *events[:4])
        await commit(db, outbox, *events[4:])
        assert await relay.run_once() == 7
        assert bus.published == events
        assert [len(ids) for _, _, ids in publisher.calls] == [3, 3, 1]
        assert relay.published == 7

    async def test_subject_and_request_id_travel(
        self, db: SqliteDatabase, outbox: SqlOutbox, relay: OutboxRelay, publisher: Recorder
    ) -> None:
        """The subject given to add and the request_id bound at add time are used."""
        a, b, c = event(1), event(2), event(3)
        with bind_context(request_id="req-1"):
            async with db.transaction() as tx:
                await outbox.add(tx, a)
                await outbox.add(tx, b, subject="orders.audit")
        await commit(db, outbox, c)
        await relay.run_once()
        assert publisher.calls == [
            (None, "req-1", [a.id]),
            ("orders.audit", "req-1", [b.id]),
            (None, None, [c.id]),
        ]

    async def test_refused_event_marked_others_published(
        self,
        db: SqliteDatabase,
        outbox: SqlOutbox,
        clock: FakeClock,
        bus: InMemoryEventBus,
    ) -> None:
        """An event the broker refuses for good gets error set; the rest go on."""
        small = InMemoryEventBus(clock=clock, max_payload=2000)
        relay = OutboxRelay(db, small, logger=RecordingLogger(), clock=clock)
        a, big, c = event(1), event(2, blob="x" * 5000), event(3)
        await commit(db, outbox, a, big, c)
        assert await relay.run_once() == 2
        assert small.published == [a, c]
        row = await db.fetch_one(
            "SELECT sent_at, error FROM hexinfra_outbox WHERE event_id = %s", (big.id,)
        )
        assert row is not None
        assert row["sent_at"] is None
        assert row["error"]
        assert await relay.run_once() == 0
        assert await relay.lag() == 0.0


class TestCrashBetweenPublishAndMark:
    async def test_republished_once_in_stream(
        self,
        db: SqliteDatabase,
        outbox: SqlOutbox,
        relay: OutboxRelay,
        bus: InMemoryEventBus,
        publisher: Recorder,
    ) -> None:
        """A relay failing after publishing leaves rows unsent; the retry is deduped."""
        events = [event(n) for n in range(2)]
        await commit(db, outbox, *events)
        publisher.fail_after_publish = 1
        with pytest.raises(ServiceUnavailable):
            await relay.run_once()
        assert (
            await db.fetch_value("SELECT count(*) FROM hexinfra_outbox WHERE sent_at IS NULL") == 2
        )
        assert await relay.run_once() == 2
        assert bus.published == events
        assert len(publisher.calls) == 2


class TestRetentionAndLag:
    async def test_lag_is_oldest_unsent_age(
        self, db: SqliteDatabase, outbox: SqlOutbox, relay: OutboxRelay, clock: FakeClock
    ) -> None:
        """lag() is the age of the oldest unsent row, 0 when all are sent."""
        assert await relay.lag() == 0.0
        await commit(db, outbox, event(1))
        clock.advance(5)
        await commit(db, outbox, event(2))
        clock.advance(2)
        assert await relay.lag() == 7.0
        await relay.run_once()
        assert await relay.lag() == 0.0
        health = await relay.health()
        assert health["lag_s"] == 0.0
        assert health["published"] == 2

    async def test_sent_rows_pruned_after_retention(
        self, db: SqliteDatabase, outbox: SqlOutbox, publisher: Recorder, clock: FakeClock
    ) -> None:
        """Sent rows older than the retention are deleted; unsent rows never are."""
        relay = OutboxRelay(
            db, publisher, logger=RecordingLogger(), clock=clock, retention=100, prune_interval=10
        )
        await commit(db, outbox, event(1))
        await relay.run_once()
        clock.advance(50)
        await commit(db, outbox, event(2))
        clock.advance(60)  # row 1 sent 110 s ago; row 2 unsent for 60 s
        assert await relay.prune() == 1
        assert await db.fetch_value("SELECT count(*) FROM hexinfra_outbox") == 1


class TestInbox:
    async def test_runs_once_per_durable(self, db: SqliteDatabase, clock: FakeClock) -> None:
        """A redelivered event is acked without running fn; another durable runs it."""
        inbox = Inbox(db, clock=clock)
        await db.execute("CREATE TABLE totals (k TEXT PRIMARY KEY, n BIGINT NOT NULL)")

        async def count(e: Event, tx: Transaction) -> None:
            await tx.execute(
                "INSERT INTO totals (k, n) VALUES (%s, 1)"
                " ON CONFLICT (k) DO UPDATE SET n = totals.n + 1",
                (e.type,),
            )

        a = inbox.idempotent(count, durable="a")
        b = inbox.idempotent(count, durable="b")
        e = event(1)
        await a(e)
        await a(e)
        await b(e)
        assert await db.fetch_value("SELECT n FROM totals") == 2
        assert await inbox.processed("a", e.id)

    async def test_failure_rolls_back_record_and_writes(
        self, db: SqliteDatabase, clock: FakeClock
    ) -> None:
        """When fn raises, neither its writes nor the record stay; a retry runs fn."""
        inbox = Inbox(db, clock=clock)
        await db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY)")
        attempts = 0

        async def flaky(e: Event, tx: Transaction) -> None:
            nonlocal attempts
            attempts += 1
            await tx.execute("INSERT INTO seen (id) VALUES (%s)", (e.id,))
            if attempts == 1:
                raise RuntimeError("first attempt fails")

        handler = inbox.idempotent(flaky, durable="d")
        e = event(1)
        with pytest.raises(RuntimeError):
            await handler(e)
        assert not await inbox.processed("d", e.id)
        assert await db.fetch_value("SELECT count(*) FROM seen") == 0
        await handler(e)
        await handler(e)
        assert attempts == 2
        assert await db.fetch_value("SELECT count(*) FROM seen") == 1

    async def test_records_pruned_after_retention(
        self, db: SqliteDatabase, clock: FakeClock
    ) -> None:
        """Records older than the retention are pruned by the handler, at most once per interval."""
        inbox = Inbox(db, clock=clock, retention=100, prune_interval=10)

        async def noop(e: Event, tx: Transaction) -> None:
            return None

        handler = inbox.idempotent(noop, durable="d")
        old = event(1)
        await handler(old)
        clock.advance(150)
        await handler(event(2))
        assert not await inbox.processed("d", old.id)
        assert await db.fetch_value("SELECT count(*) FROM hexinfra_inbox") == 1


class TestBackgroundLoop:
    async def test_polls_and_stops(
        self,
        db: SqliteDatabase,
        outbox: SqlOutbox,
        relay: OutboxRelay,
        publisher: Recorder,
        bus: InMemoryEventBus,
        clock: FakeClock,
    ) -> None:
        """Started, the relay catches up at once, then polls every poll_interval."""
        first = event(1)
        await commit(db, outbox, first)
        await relay.start()
        await asyncio.wait_for(publisher.published.wait(), 5)
        assert bus.published == [first]
        publisher.published.clear()
        second = event(2)
        await commit(db, outbox, second)
        await until_sleeping(clock)  # the relay waits for its next poll
        clock.advance(relay.poll_interval)
        await asyncio.wait_for(publisher.published.wait(), 5)
        assert bus.published == [first, second]
        assert relay.running
        await relay.stop(1)
        assert not relay.running

    async def test_an_unexpected_failure_never_stops_the_relay(
        self,
        db: SqliteDatabase,
        outbox: SqlOutbox,
        relay: OutboxRelay,
        publisher: Recorder,
        bus: InMemoryEventBus,
        clock: FakeClock,
    ) -> None:
        """A publisher raising something unexpected (not a DomainError) is logged and
        retried after a backoff: the relay keeps running and publishes the row."""
        real = publisher.publish_many
        calls = 0

        async def flaky(events: Sequence[Event], *, subject: str | None = None) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in a publisher wrapper")
            return await real(events, subject=subject)

        publisher.publish_many = flaky  # type: ignore[method-assign]
        first = event(1)
        await commit(db, outbox, first)
        await relay.start()
        await until_sleeping(clock)  # backing off after the failure
        assert relay.running
        assert relay.last_error is not None
        assert "RuntimeError" in relay.last_error
        clock.advance(60)
        await asyncio.wait_for(publisher.published.wait(), 5)
        assert bus.published == [first]
        await relay.stop(1)


class TestRowsThatDoNotDecode:
    async def test_a_broken_row_is_marked_and_never_blocks_the_rest(
        self, db: SqliteDatabase, outbox: SqlOutbox, relay: OutboxRelay, bus: InMemoryEventBus
    ) -> None:
        """A row whose data is not JSON (another writer, a hand fix) is marked with an
        error; the rows behind it are published."""
        first, second = event(1), event(2)
        await commit(db, outbox, first, second)
        await db.execute(
            "UPDATE hexinfra_outbox SET data = %s WHERE event_id = %s", ("{not json", first.id)
        )
        assert await relay.run_once() == 1
        assert bus.published == [second]
        errors = await db.fetch_all(
            "SELECT event_id, error FROM hexinfra_outbox WHERE error IS NOT NULL"
        )
        assert [(r["event_id"], r["error"]) for r in errors] == [
            (first.id, "row does not decode: JSONDecodeError")
        ]
        assert await relay.run_once() == 0
