"""adapters.outbox on a real PostgreSQL and NATS: publish on commit only, NOTIFY,
several relays, the inbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from adapters.outbox import CHANNEL, Inbox, OutboxRelay, SqlOutbox, install
from adapters.postgres import PostgresDatabase, PostgresSettings
from ports.database import Transaction
from ports.events import Event, PublishAck
from testing.fakes import RecordingLogger
from tests.helpers import wait_until_async

pytestmark = pytest.mark.integration


def event(n: int = 0) -> Event:
    return Event(type="orders.placed", source="orders", organization_id="org-1", data={"n": n})


class Counting:
    """NatsPublisher counting the acks the broker reported as duplicates."""

    def __init__(self, inner: NatsPublisher) -> None:
        self.inner = inner
        self.acks: list[PublishAck] = []

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        return (await self.publish_many([event], subject=subject))[0]

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        acks = await self.inner.publish_many(events, subject=subject)
        self.acks.extend(acks)
        return acks


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[PostgresDatabase]:
    settings = PostgresSettings(url=database_url, pool_min_size=1, pool_max_size=8)
    database = PostgresDatabase(settings, RecordingLogger())
    await database.connect()
    await install(database, logger=RecordingLogger())
    yield database
    await database.close()


@pytest.fixture
async def nats(events_config: dict[str, str]) -> AsyncIterator[NatsConnection]:
    connection = NatsConnection.from_config(InMemoryConfig(events_config))
    await connection.connect()
    yield connection
    await connection.close(timeout=5)


@pytest.fixture
def publisher(nats: NatsConnection) -> Counting:
    return Counting(NatsPublisher(nats))


async def in_stream(nats: NatsConnection) -> int:
    info = await nats.jetstream.stream_info(nats.settings.stream)
    return int(info.state.messages)


async def has(db: PostgresDatabase, sql: str) -> bool:
    return bool(await db.fetch_value(sql))


async def acked(publisher: Counting) -> bool:
    return bool(publisher.acks)


async def done(value: bool) -> bool:
    return value


async def add_all(
    db: PostgresDatabase, outbox: SqlOutbox, events: Sequence[Event], *, fail: bool = False
) -> None:
    async with db.transaction() as tx:
        for e in events:
            await outbox.add(tx, e)
        if fail:
            raise RuntimeError("rolled back")


class TestCommitPublishes:
    async def test_commit_publishes_rollback_does_not(
        self, db: PostgresDatabase, nats: NatsConnection, publisher: Counting
    ) -> None:
        """Only the committed transaction's event reaches the stream."""
        outbox = SqlOutbox(db)
        relay = OutboxRelay(db, publisher, logger=RecordingLogger())
        kept = event(1)
        await add_all(db, outbox, [kept])
        with pytest.raises(RuntimeError):
            await add_all(db, outbox, [event(2)], fail=True)
        assert await relay.run_once() == 1
        assert await relay.run_once() == 0
        assert await in_stream(nats) == 1
        assert [a.duplicate for a in publisher.acks] == [False]
        assert await relay.lag() == 0.0


class TestNotify:
    async def test_notifications_yield_and_close_on_cancel(self, db: PostgresDatabase) -> None:
        """notifications() yields pg_notify payloads and closes its connection on cancel."""
        got: asyncio.Queue[str] = asyncio.Queue()

        async def listen() -> None:
            async for payload in db.notifications("hexinfra_test_channel"):
                got.put_nowait(payload)

        task = asyncio.create_task(listen())
        listening = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'"
        await wait_until_async(lambda: has(db, listening), what="LISTEN in place")
        await db.execute("SELECT pg_notify('hexinfra_test_channel', 'hello')")
        assert await asyncio.wait_for(got.get(), 5) == "hello"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.fetch_value(listening) == 0

    async def test_notify_wakes_the_relay(
        self, db: PostgresDatabase, nats: NatsConnection, publisher: Counting
    ) -> None:
        """With a 30 s poll, a commit is published in well under a second (NOTIFY)."""
        outbox = SqlOutbox(db)
        relay = OutboxRelay(db, publisher, logger=RecordingLogger(), poll_interval=30.0)
        await relay.start()
        try:
            listening = (
                f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%{CHANNEL}%%'"
            )
            await wait_until_async(lambda: has(db, listening), what="relay listening")
            await relay.run_once()  # the start-up pass is over
            started = time.perf_counter()
            await add_all(db, outbox, [event(1)])
            await wait_until_async(lambda: acked(publisher), interval=0.0005, what="ack")
            elapsed = time.perf_counter() - started
        finally:
            await relay.stop(5)
        assert publisher.acks, "not published"
        print(f"commit to broker ack with NOTIFY: {elapsed * 1000:.1f} ms")
        assert elapsed < 1.0


class TestSeveralRelays:
    async def test_three_relays_publish_each_row_once(
        self, db: PostgresDatabase, nats: NatsConnection, publisher: Counting
    ) -> None:
        """Three relays draining at once while writers commit: each row stored once,
        no duplicate publish at all (SKIP LOCKED)."""
        outbox = SqlOutbox(db)
        relays = [
            OutboxRelay(db, publisher, logger=RecordingLogger(), batch_size=20, poll_interval=0.05)
            for _ in range(3)
        ]
        events = [event(n) for n in range(600)]
        for relay in relays:
            await relay.start()
        try:
            await asyncio.gather(
                *(add_all(db, outbox, events[i : i + 10]) for i in range(0, 600, 10))
            )
            await wait_until_async(
                lambda: done(sum(r.published for r in relays) >= 600),
                timeout=30,
                what="600 rows published",
            )
        finally:
            for relay in relays:
                await relay.stop(5)
        assert sum(r.published for r in relays) == 600
        assert await in_stream(nats) == 600
        assert sum(a.duplicate for a in publisher.acks) == 0
        assert len({a.sequence for a in publisher.acks}) == 600


class TestInbox:
    async def test_redelivery_is_acked_without_running_fn(
        self, db: PostgresDatabase, nats: NatsConnection
    ) -> None:
        """A handler that fails after the inbox committed is redelivered; fn runs once."""
        await db.execute("CREATE TABLE totals (k TEXT PRIMARY KEY, n BIGINT NOT NULL)")
        runs: list[str] = []
        deliveries: list[str] = []
        done = asyncio.Event()

        async def count(e: Event, tx: Transaction) -> None:
            runs.append(e.id)
            await tx.execute(
                "INSERT INTO totals (k, n) VALUES ('all', 1)"
                " ON CONFLICT (k) DO UPDATE SET n = totals.n + 1"
            )

        handler = Inbox(db).idempotent(count, durable="totals")

        async def flaky(e: Event) -> None:
            deliveries.append(e.id)
            await handler(e)
            if len(deliveries) == 1:
                raise RuntimeError("lost the ack after committing")
            done.set()

        sub = await NatsSubscriber(nats).subscribe(
            "orders.>", flaky, durable="totals", backoff=(0.05,), ack_wait=5
        )
        try:
            e = event(1)
            await NatsPublisher(nats).publish(e)
            await asyncio.wait_for(done.wait(), 10)
        finally:
            await sub.stop(5)
        assert deliveries == [e.id, e.id]
        assert runs == [e.id]
        assert await db.fetch_value("SELECT n FROM totals WHERE k = 'all'") == 1
