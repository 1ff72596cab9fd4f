"""The orders example on the outbox and inbox, under real faults (issue 13, point 6).

A PostgreSQL and a NATS server of this module's own (restartable); each scenario gets
a fresh database and stream. Concurrent tasks place orders through
``OrderService.place_order`` (the order and ``outbox.add`` in one transaction), and 1
in 10 transactions rolls back after ``outbox.add``, while

- (a) the relay is killed mid-batch (after the broker stored a batch, before the rows
  are marked sent) and a new relay starts,
- (b) PostgreSQL is restarted,
- (c) NATS is restarted,
- three relays run at once.

Then: the stream holds exactly one message per committed order (the rows in
``orders`` at the end, the ground truth: a commit whose answer was lost in a restart
counts as committed) and none for a rolled-back one, and the projection's totals (run
through ``Inbox.idempotent``) equal the committed orders, exactly. Each scenario
prints its figures (``-s``): committed, rolled back, in stream, duplicates, projection
totals, and the time it took. A last test places orders while NATS is stopped: each
order is answered in milliseconds and published once NATS is back.

``ORDERS`` per scenario is sized to keep this module within ~30 s on two cores (the
issue's 10,000 run with ``HEXINFRA_OUTBOX_FAULT_ORDERS=10000``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import attrs
import psycopg
import pytest
from psycopg import conninfo, sql

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from adapters.outbox import Inbox, OutboxRelay, SqlOutbox, install
from adapters.postgres import PostgresDatabase, PostgresSettings
from domain_errors import Conflict, ServiceUnavailable
from examples.orders.app import migrate_schema
from examples.orders.domain import OrderService, TotalsProjection
from ports.clock import SystemClock
from ports.database import Transaction
from ports.events import Event, PublishAck, Publisher
from testing.fakes import RecordingLogger
from testing.servers import NatsServer, PostgresServer, nats_server, postgres_server
from tests.helpers import wait_until, wait_until_async

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

ORDERS = int(os.environ.get("HEXINFRA_OUTBOX_FAULT_ORDERS", "1500"))
WORKERS = 16
ORGS = 7


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, free to be restarted."""
    with postgres_server(durable=False) as server:
        yield server


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    """A NATS (JetStream, file storage) of this module's own, free to be restarted."""
    with nats_server() as server:
        yield server


@pytest.fixture
def servers(pg: PostgresServer, nats: NatsServer) -> Iterator[tuple[PostgresServer, NatsServer]]:
    """Both servers, started again after the test if it left one stopped."""
    yield pg, nats
    pg.start()
    nats.start()


class Abort(Exception):
    """Raised after ``outbox.add`` to roll the order's transaction back."""


class RollingBackOutbox:
    """The outbox, rolling back the transaction of every order whose number ends in 0
    (after the event was added)."""

    def __init__(self, inner: SqlOutbox) -> None:
        self.inner = inner

    async def add(self, tx: Transaction, event: Event, *, subject: str | None = None) -> None:
        await self.inner.add(tx, event, subject=subject)
        if int(str(event.data["id"]).rsplit("-", 1)[1]) % 10 == 0:
            raise Abort(event.id)


class KillSwitch:
    """A publisher through which a relay can be killed mid-batch: once ``arm()``-ed,
    the next call returns from the broker (the batch is stored) and then hangs, so the
    relay is cancelled between publishing and marking its rows sent."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.armed = False
        self.caught = asyncio.Event()
        self.dropped = 0
        """Copies the broker acked as duplicates (dropped by event id)."""

    def arm(self) -> None:
        self.armed, self.caught = True, asyncio.Event()

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        return (await self.publish_many([event], subject=subject))[0]

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        acks = await self.inner.publish_many(events, subject=subject)
        self.dropped += sum(ack.duplicate for ack in acks)
        if self.armed:
            self.armed = False
            self.caught.set()
            await asyncio.Event().wait()  # killed here: published, not marked
        return acks


@attrs.define
class Figures:
    committed: int = 0
    rolled_back: int = 0
    in_stream: int = 0
    duplicates: int = 0
    projected_orders: int = 0
    projected_cents: int = 0
    place_errors: int = 0
    broker_dropped: int = 0


@attrs.define
class World:
    db: PostgresDatabase
    conn: NatsConnection
    service: OrderService
    publisher: KillSwitch
    relays: list[OutboxRelay]
    log: RecordingLogger
    placed: set[str] = attrs.field(factory=set)
    rolled_back: set[str] = attrs.field(factory=set)
    errors: int = 0

    def new_relay(self) -> OutboxRelay:
        relay = OutboxRelay(
            self.db, self.publisher, logger=self.log, batch_size=200, poll_interval=0.05
        )
        self.relays.append(relay)
        return relay


@pytest.fixture
async def world(servers: tuple[PostgresServer, NatsServer]) -> AsyncIterator[World]:
    """The orders service wired as ``examples.orders.app`` wires it, on a fresh
    database and stream of the module's servers; no relay running yet."""
    pg, nats = servers
    name = f"outbox_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log = RecordingLogger()
    db = PostgresDatabase(
        PostgresSettings(
            url=conninfo.make_conninfo(pg.url, dbname=name),
            pool_min_size=2,
            pool_max_size=WORKERS + 8,
            pool_timeout=10.0,
            connect_retries=2,
            connect_backoff=0.05,
        ),
        log,
    )
    stream = f"OUTBOX_{uuid.uuid4().hex[:8].upper()}"
    conn = NatsConnection.from_config(
        InMemoryConfig(
            {
                "NATS_URL": nats.url,
                "EVENTS_STREAM": stream,
                "EVENTS_PREFIX": stream.lower(),
                "EVENTS_DEAD_PREFIX": f"{stream.lower()}-dead",
                "EVENTS_STORAGE": "file",
                "EVENTS_PUBLISH_TIMEOUT_S": "1",
                "EVENTS_PUBLISH_RETRIES": "2",
                "EVENTS_PUBLISH_BACKOFF_S": "0.05",
                "EVENTS_PULL_EXPIRES_S": "0.5",
                "EVENTS_API_TIMEOUT_S": "2",
                "NATS_RECONNECT_WAIT_S": "0.05",
            }
        ),
        logger=log,
    )
    await db.connect()
    await conn.connect()
    await install(db, logger=log)
    await migrate_schema(db, log)
    service = OrderService(db, RollingBackOutbox(SqlOutbox(db)), log, SystemClock())
    sub = await NatsSubscriber(conn).subscribe(
        "order.placed",
        Inbox(db).idempotent(TotalsProjection(log), durable="order-totals"),
        durable="order-totals",
        concurrency=8,
        max_deliver=1000,
        ack_wait=5,
        backoff=(0.05, 0.1, 0.25, 0.5),
    )
    w = World(db, conn, service, KillSwitch(NatsPublisher(conn)), [], log)
    yield w
    for relay in w.relays:
        await relay.stop(0)
    await sub.stop(5)
    await conn.close(timeout=5)
    await db.close()
    async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


async def place_all(w: World, total: int = ORDERS) -> None:
    """``WORKERS`` tasks place orders ``o-0`` .. ``o-<total-1>``; a failed attempt is
    retried with the same id (``Conflict`` then means the lost answer had committed)."""
    numbers = iter(range(total))

    async def worker() -> None:
        for n in numbers:
            order_id = f"o-{n}"
            while True:
                try:
                    await w.service.place_order(
                        order_id=order_id,
                        organization_id=f"org-{n % ORGS}",
                        customer="Ada",
                        amount_cents=n + 1,
                    )
                except Abort:
                    w.rolled_back.add(order_id)
                except Conflict:
                    w.placed.add(order_id)  # an earlier attempt committed
                except ServiceUnavailable:
                    w.errors += 1
                    await asyncio.sleep(0.02)  # retry backoff while a server restarts
                    continue
                else:
                    w.placed.add(order_id)
                break

    await asyncio.gather(*(worker() for _ in range(WORKERS)))


async def settle_and_measure(w: World, began: float, label: str) -> Figures:
    """Wait until the stream and the projection hold every committed order, then
    compare them with the ``orders`` table, exactly."""
    committed_rows = await w.db.fetch_all("SELECT id, organization_id, amount_cents FROM orders")
    committed = {row["id"] for row in committed_rows}

    async def stream_count() -> int:
        info = await w.conn.jetstream.stream_info(w.conn.settings.stream)
        return int(info.state.messages)

    async def projected() -> int:
        return int(
            await w.db.fetch_value("SELECT coalesce(sum(orders), 0) FROM organization_totals")
        )

    async def caught_up() -> bool:
        return await stream_count() >= len(committed) and await projected() >= len(committed)

    await wait_until_async(caught_up, timeout=60, interval=0.05, what=f"{label}: caught up")
    ids = await read_stream_ids(w.conn, await stream_count())
    per_id = Counter(ids)
    expected = {
        org: (
            sum(1 for r in committed_rows if r["organization_id"] == org),
            sum(int(r["amount_cents"]) for r in committed_rows if r["organization_id"] == org),
        )
        for org in {r["organization_id"] for r in committed_rows}
    }
    totals = {
        row["organization_id"]: (int(row["orders"]), int(row["amount_cents"]))
        for row in await w.db.fetch_all(
            "SELECT organization_id, orders, amount_cents FROM organization_totals"
        )
    }
    unsent = await w.db.fetch_value("SELECT count(*) FROM hexinfra_outbox WHERE sent_at IS NULL")
    figures = Figures(
        committed=len(committed),
        rolled_back=len(w.rolled_back),
        in_stream=len(ids),
        duplicates=len(ids) - len(per_id),
        projected_orders=sum(n for n, _ in totals.values()),
        projected_cents=sum(c for _, c in totals.values()),
        place_errors=w.errors,
        broker_dropped=w.publisher.dropped,
    )
    print(
        f"\n{label}: placed {ORDERS} by {WORKERS} tasks, committed {figures.committed}, "
        f"rolled back {figures.rolled_back}, in stream {figures.in_stream}, duplicates "
        f"{figures.duplicates}, projection {figures.projected_orders} orders / "
        f"{figures.projected_cents} cents (committed: {sum(c for _, c in expected.values())}), "
        f"retried placements {figures.place_errors}, copies dropped by the broker "
        f"{figures.broker_dropped}, "
        f"published by relays {[r.published for r in w.relays]}, "
        f"{time.monotonic() - began:.1f} s"
    )
    assert committed == w.placed  # every order a client saw placed is stored, no other
    assert not committed & w.rolled_back
    assert len(w.rolled_back) == ORDERS // 10
    assert committed | w.rolled_back == {f"o-{n}" for n in range(ORDERS)}
    assert set(per_id) == {f"order.placed:{order_id}" for order_id in committed}
    assert figures.duplicates == 0
    assert totals == expected
    assert unsent == 0
    return figures


async def read_stream_ids(conn: NatsConnection, count: int) -> list[str]:
    """The event id (``Nats-Msg-Id``) of every message in the stream."""
    js = conn.jetstream
    psub = await js.pull_subscribe(f"{conn.settings.prefix}.>", stream=conn.settings.stream)
    ids: list[str] = []
    try:
        while len(ids) < count:
            for msg in await psub.fetch(min(500, count - len(ids)), timeout=5):
                ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
                await msg.ack()
    finally:
        await psub.unsubscribe()
    return ids


async def when_placed(w: World, n: int) -> None:
    await wait_until(lambda: len(w.placed) + len(w.rolled_back) >= n, timeout=60)


async def scenario(
    w: World, label: str, fault: Callable[[], Awaitable[None]], relays: int = 1
) -> Figures:
    for _ in range(relays):
        await w.new_relay().start()
    began = time.monotonic()
    await asyncio.gather(place_all(w), fault())
    return await settle_and_measure(w, began, label)


async def test_relay_killed_mid_batch_and_restarted(world: World) -> None:
    """(a) Three times, the relay is cancelled after the broker stored a batch and
    before the rows were marked sent; a new relay republishes them and the broker
    drops the copies by event id."""
    kills = 0

    async def kill_three_times() -> None:
        nonlocal kills
        for fraction in (0.2, 0.45, 0.7):
            await when_placed(world, int(ORDERS * fraction))
            world.publisher.arm()
            await asyncio.wait_for(world.publisher.caught.wait(), 30)
            await world.relays[-1].stop(0)  # cancelled mid-batch
            await world.new_relay().start()
            kills += 1

    figures = await scenario(world, "(a) relay killed mid-batch x3", kill_three_times)
    assert kills == 3
    assert figures.broker_dropped > 0  # the killed batches were published again
    assert figures.in_stream == figures.committed


async def test_postgres_restarted(world: World, pg: PostgresServer) -> None:
    """(b) PostgreSQL restarts while orders are placed and the relay and the projection
    work: retried placements, no lost or doubled event."""

    async def restart() -> None:
        await when_placed(world, ORDERS // 3)
        await asyncio.to_thread(pg.restart)

    figures = await scenario(world, "(b) PostgreSQL restarted", restart)
    assert figures.projected_orders == figures.committed


async def test_nats_restarted(world: World, nats: NatsServer) -> None:
    """(c) NATS restarts while orders are placed: placements never fail (the broker is
    not on their path); the relay catches up, each event once in the stream."""

    async def restart() -> None:
        await when_placed(world, ORDERS // 3)
        await asyncio.to_thread(nats.restart)

    figures = await scenario(world, "(c) NATS restarted", restart)
    assert figures.place_errors == 0


async def test_three_relays_at_once(world: World) -> None:
    """Three relays drain the outbox at once (SKIP LOCKED): same outcome."""

    async def nothing() -> None:
        return None

    await scenario(world, "three relays at once", nothing, relays=3)
    assert sum(1 for r in world.relays if r.published) >= 2


async def test_nats_down_does_not_fail_or_slow_orders(world: World, nats: NatsServer) -> None:
    """With NATS stopped, 200 orders are placed, each answered in milliseconds (no
    broker on the request's path); once NATS is back the relay publishes them all."""
    service = OrderService(world.db, SqlOutbox(world.db), world.log, SystemClock())
    relay = world.new_relay()
    await relay.start()
    await asyncio.to_thread(nats.stop)
    latencies: list[float] = []
    try:
        for n in range(1, 201):
            began = time.perf_counter()
            await service.place_order(
                order_id=f"down-{n}", organization_id="org-x", customer="Ada", amount_cents=n
            )
            latencies.append(time.perf_counter() - began)
        await wait_until(lambda: relay.last_error is not None, timeout=30, what="relay failing")
        assert relay.published == 0
    finally:
        await asyncio.to_thread(nats.start)
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    began = time.monotonic()
    await wait_until(lambda: relay.published >= 200, timeout=60, what="published after recovery")
    print(
        f"\nNATS down: 200 orders placed, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; published {relay.published} "
        f"{time.monotonic() - began:.1f} s after NATS came back"
    )
    assert latencies[-1] < 0.5
    info = await world.conn.jetstream.stream_info(world.conn.settings.stream)
    assert info.state.messages == 200
    await wait_until_async(
        lambda: _totals_are(world, "org-x", 200), timeout=30, what="projection caught up"
    )


async def _totals_are(w: World, org: str, orders: int) -> bool:
    return (await w.service.totals(org)).orders == orders
