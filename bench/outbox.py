"""Outbox benchmark: relay throughput vs publish_many, commit-to-handler latency.

    .venv/bin/python bench/outbox.py          # starts its own PostgreSQL and nats-server
    DATABASE_URL=... NATS_URL=... .venv/bin/python bench/outbox.py
    .venv/bin/python bench/outbox.py --quick  # smaller runs (a smoke test)

In one process, on the same servers:

- throughput: ``OutboxRelay.run_once()`` draining N committed rows (select ``FOR
  UPDATE SKIP LOCKED``, ``publish_many``, mark sent; batches of 500) vs
  ``NatsPublisher.publish_many`` of the same events (fresh ids, batches of 500).
  Target: relay >= 0.5x. Median of ``--rounds`` paired rounds, order alternating.
- latency: one event committed at a time through ``SqlOutbox``; a durable consumer
  running an ``Inbox`` handler stamps its arrival; p50 / p99 from the end of the
  commit to the handler, with LISTEN/NOTIFY (poll every 1 s as the fallback) and
  with polling only (every 100 ms). Target: p50 <= 20 ms with NOTIFY.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from adapters.outbox import Inbox, OutboxRelay, SqlOutbox, install
from adapters.postgres import PostgresDatabase, PostgresSettings
from domain_errors import InternalServerError
from ports.database import Transaction
from ports.events import Event
from testing.fakes import RecordingLogger

_ids = itertools.count()


@contextlib.contextmanager
def database_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from testing.servers import postgres_server

    with postgres_server() as server:
        yield server.url


@contextlib.contextmanager
def nats_url() -> Iterator[str]:
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    from testing.servers import nats_server

    with nats_server() as server:
        yield server.url


def events(n: int) -> list[Event]:
    return [
        Event(
            type="bench.outbox",
            source="bench",
            organization_id="org-1",
            data={"n": next(_ids), "note": "an order was placed"},
        )
        for _ in range(n)
    ]


async def fill(db: PostgresDatabase, outbox: SqlOutbox, batch: list[Event]) -> None:
    for start in range(0, len(batch), 1000):
        async with db.transaction() as tx:
            for e in batch[start : start + 1000]:
                await outbox.add(tx, e)


async def throughput(
    db: PostgresDatabase, nats: NatsConnection, n: int, rounds: int
) -> tuple[list[float], list[float]]:
    publisher = NatsPublisher(nats)
    outbox = SqlOutbox(db)
    relay = OutboxRelay(db, publisher, logger=RecordingLogger(), batch_size=500)
    ours: list[float] = []
    raw: list[float] = []
    for r in range(rounds):
        batch = events(n)
        await fill(db, outbox, batch)
        copies = [Event.from_dict({**e.to_dict(), "id": f"raw-{e.id}"}) for e in batch]

        async def run_relay() -> None:
            started = time.perf_counter()
            done = await relay.run_once()
            assert done == n, done
            ours.append(n / (time.perf_counter() - started))

        async def run_raw(copies: list[Event] = copies) -> None:
            started = time.perf_counter()
            for i in range(0, n, 500):
                await publisher.publish_many(copies[i : i + 500])
            raw.append(n / (time.perf_counter() - started))

        for step in (run_relay, run_raw) if r % 2 == 0 else (run_raw, run_relay):
            await step()
        await relay.prune()
    return ours, raw


async def latency(
    db: PostgresDatabase, nats: NatsConnection, n: int, *, listen: bool, poll: float
) -> list[float]:
    outbox = SqlOutbox(db)
    relay = OutboxRelay(
        db, NatsPublisher(nats), logger=RecordingLogger(), poll_interval=poll, listen=listen
    )
    arrived: dict[str, float] = {}
    waiting: dict[str, asyncio.Future[None]] = {}

    async def stamp(event: Event, tx: Transaction) -> None:
        arrived[event.id] = time.perf_counter()
        fut = waiting.get(event.id)
        if fut is not None and not fut.done():
            fut.set_result(None)

    durable = f"lat_{'notify' if listen else 'poll'}"
    sub = await NatsSubscriber(nats).subscribe(
        "bench.outbox", Inbox(db).idempotent(stamp, durable=durable), durable=durable
    )
    await relay.start()
    await relay.run_once()
    await asyncio.sleep(0.5)  # let the LISTEN connection settle before measuring
    committed: dict[str, float] = {}
    try:
        for e in events(n):
            waiting[e.id] = asyncio.get_running_loop().create_future()
            async with db.transaction() as tx:
                await outbox.add(tx, e)
            committed[e.id] = time.perf_counter()
            await asyncio.wait_for(waiting[e.id], 10)
    finally:
        await relay.stop(5)
        await sub.stop(5)
    return [(arrived[i] - committed[i]) * 1000.0 for i in committed]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    n = 2_000 if args.quick else 20_000
    samples = 50 if args.quick else 300
    with database_url() as url, nats_url() as nurl:
        db = PostgresDatabase(PostgresSettings(url=url, pool_max_size=10), RecordingLogger())
        await db.connect()
        await db.execute("DROP TABLE IF EXISTS hexinfra_outbox, hexinfra_inbox")
        with contextlib.suppress(InternalServerError):  # a fresh database has no table
            await db.execute("DELETE FROM hexinfra_migrations WHERE namespace = 'hexinfra'")
        await install(db, logger=RecordingLogger())
        nats = NatsConnection.from_config(
            InMemoryConfig(
                {"NATS_URL": nurl, "EVENTS_STREAM": "BENCH_OUTBOX", "EVENTS_PREFIX": "bo"}
            )
        )
        await nats.connect()
        try:
            with contextlib.suppress(Exception):
                await nats.jetstream.purge_stream("BENCH_OUTBOX")
            ours, raw = await throughput(db, nats, n, rounds)
            ratios = [a / b for a, b in zip(ours, raw, strict=True)]
            ratio = statistics.median(ratios)
            median = statistics.median
            print(f"throughput, {n:,} events, {rounds} paired rounds (events/s):")
            print(f"  relay run_once  best {max(ours):>9,.0f}  median {median(ours):>9,.0f}")
            print(f"  publish_many    best {max(raw):>9,.0f}  median {median(raw):>9,.0f}")
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(f"  ratio (median of rounds) {ratio:.2f}x ({spread}), target >= 0.5x")
            await nats.jetstream.purge_stream("BENCH_OUTBOX")
            notify = await latency(db, nats, samples, listen=True, poll=1.0)
            polling = await latency(db, nats, samples, listen=False, poll=0.1)
            print(f"commit -> handler latency, {samples} events one at a time (ms):")
            for name, values in (("LISTEN/NOTIFY", notify), ("polling 100 ms", polling)):
                p50, p99 = pct(values, 50), pct(values, 99)
                print(f"  {name:16} p50 {p50:7.1f}  p99 {p99:7.1f}  max {max(values):7.1f}")
            print("  target: p50 <= 20 ms with NOTIFY")
            ok = ratio >= 0.5 and pct(notify, 50) <= 20.0
        finally:
            await nats.close(timeout=5)
            await db.close()
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
