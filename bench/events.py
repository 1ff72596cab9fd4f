"""Events benchmark: our NATS adapter next to raw nats-py, and the in-memory bus.

    .venv/bin/python bench/events.py            # starts its own nats-server from the wheel
    NATS_URL=nats://127.0.0.1:4222 .venv/bin/python bench/events.py
    .venv/bin/python bench/events.py --quick    # smaller runs (a smoke test)

Side by side, in one process, on the same server and the same messages:

- publish + PubAck, sequential: ``NatsPublisher.publish`` vs ``js.publish``
- pipelined: ``NatsPublisher.publish_many`` vs ``js.publish_async`` + gather
- consume + ack at concurrency 1 and 16: ``NatsSubscriber`` (continuous pull holding
  at most ``2 x concurrency`` events it has not started, ADR 0024) vs a raw pull
  consumer holding as many (``fetch(2 x c)`` + ``ack``), and, for information, a raw
  push consumer that holds up to 10,000 (callback + ``ack``)
- ``InMemoryEventBus``: publish_many to handled

Raw paths get their payloads and headers pre-encoded (our codec's output), so the
ratios charge our adapter with all of its own work. Each pair runs ``--rounds``
times, the two sides back to back, alternating which goes first. The machine is
shared and noisy, so the ratio reported (and held to its target) is the median of
the per-round ratios: a slow spell hits both sides of a round alike. The best
round of each side is printed too, and the best-to-best ratio beside it.
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
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from adapters import event_codec
from adapters.memory import InMemoryConfig, InMemoryEventBus
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from ports.events import Event

_ids = itertools.count()
# name, our rates, raw rates (paired by round) or None, target ratio or None
Result = tuple[str, list[float], list[float] | None, float | None]


def events(n: int, type_: str = "bench.tick") -> list[Event]:
    """``n`` small events with fresh ids (so dedupe never kicks in)."""
    return [
        Event(
            type=type_,
            source="bench",
            organization_id="org-1",
            id=f"bench-{next(_ids)}",
            data={"order_id": i, "total": 12.5, "currency": "EUR"},
        )
        for i in range(n)
    ]


def encoded(batch: list[Event], prefix: str) -> list[tuple[str, bytes, dict[str, str]]]:
    out = []
    for event in batch:
        body, headers = event_codec.encode(event)
        out.append((f"{prefix}.{event.type}", body, headers))
    return out


async def timed(work: Callable[[], Awaitable[None]], n: int) -> float:
    began = time.perf_counter()
    await work()
    return n / (time.perf_counter() - began)


async def paired(
    round_: int, n: int, ours: Callable[[], Awaitable[None]], *raws: Callable[[], Awaitable[None]]
) -> list[float]:
    """One round: our side and the raw sides back to back (reversed on odd rounds);
    the rates in the order given."""
    sides = [ours, *raws]
    order = list(range(len(sides)))
    if round_ % 2:
        order.reverse()
    rates = [0.0] * len(sides)
    for i in order:
        rates[i] = await timed(sides[i], n)
    return rates


@contextlib.contextmanager
def server() -> Iterator[str]:
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    from testing.servers import nats_server

    with nats_server() as srv:
        yield srv.url


async def bench_nats(url: str, *, sizes: dict[str, int], rounds: int) -> list[Result]:
    config = InMemoryConfig(
        {
            "NATS_URL": url,
            "EVENTS_STREAM": "BENCH",
            "EVENTS_PREFIX": "bench",
            "EVENTS_DEAD_PREFIX": "bench-dead",
        }
    )
    conn = NatsConnection.from_config(config)
    await conn.connect()
    nc = await nats.connect(url)
    js = nc.jetstream()
    publisher = NatsPublisher(conn)
    prefix = conn.settings.prefix
    results: list[Result] = []

    # -- sequential publish + ack -----------------------------------------------------
    n = sizes["sequential"]
    ours_rates, raw_rates = [], []
    for r in range(rounds):
        batch = events(n)

        async def ours(batch: list[Event] = batch) -> None:
            for event in batch:
                await publisher.publish(event)

        messages = encoded(events(n), prefix)

        async def raw(messages: list[tuple[str, bytes, dict[str, str]]] = messages) -> None:
            for subject, body, headers in messages:
                await js.publish(subject, body, headers=headers)

        ours_rate, raw_rate = await paired(r, n, ours, raw)
        ours_rates.append(ours_rate)
        raw_rates.append(raw_rate)
    results.append(("publish + ack, sequential", ours_rates, raw_rates, 0.9))

    # -- pipelined publish ----------------------------------------------------------------
    n = sizes["pipelined"]
    ours_rates, raw_rates = [], []
    for r in range(rounds):
        batch = events(n)

        async def ours_many(batch: list[Event] = batch) -> None:
            await publisher.publish_many(batch)

        messages = encoded(events(n), prefix)

        async def raw_async(messages: list[tuple[str, bytes, dict[str, str]]] = messages) -> None:
            futures = [await js.publish_async(s, b, headers=h) for s, b, h in messages]
            await asyncio.gather(*futures)

        ours_rate, raw_rate = await paired(r, n, ours_many, raw_async)
        ours_rates.append(ours_rate)
        raw_rates.append(raw_rate)
    results.append(("publish_many vs publish_async", ours_rates, raw_rates, 1.0))

    # -- consume + ack ------------------------------------------------------------------
    # A subscription holds at most 2 x concurrency events it has not started (ADR 0024).
    # Like with like: a raw pull consumer holding the same number (fetch(2 x c), ack
    # each); the raw push callback holds up to 10,000 and is shown for information.
    n = sizes["consume"]
    for concurrency in (1, 16):
        results.extend(await _consume(conn, js, prefix, n, rounds, concurrency))

    await js.delete_stream("BENCH")
    await js.delete_stream("BENCH_DEAD")
    await nc.close()
    await conn.close()
    return results


async def _consume(
    conn: NatsConnection, js: JetStreamContext, prefix: str, n: int, rounds: int, c: int
) -> list[Result]:
    publisher, subscriber = NatsPublisher(conn), NatsSubscriber(conn)
    ours_rates: list[float] = []
    pull_rates: list[float] = []
    push_rates: list[float] = []
    for r in range(rounds):
        subject = f"consume{c}x{r}"
        await publisher.publish_many(events(n, f"{subject}.tick"))
        wire = f"{prefix}.{subject}.>"

        async def ours(subject: str = subject, r: int = r) -> None:
            done = asyncio.Event()
            count = 0

            async def handler(event: Event) -> None:
                nonlocal count
                count += 1
                if count == n:
                    done.set()

            sub = await subscriber.subscribe(
                f"{subject}.>", handler, durable=f"ours{c}x{r}", concurrency=c
            )
            await done.wait()
            await sub.stop()

        async def raw_pull(wire: str = wire, r: int = r) -> None:
            psub = await js.pull_subscribe(wire, durable=f"pull{c}x{r}", stream="BENCH")
            count = 0
            while count < n:
                try:
                    msgs = await psub.fetch(2 * c, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                await asyncio.gather(*(msg.ack() for msg in msgs))
                count += len(msgs)
            await psub.unsubscribe()

        async def raw_push(wire: str = wire, r: int = r) -> None:
            done = asyncio.Event()
            count = 0

            async def cb(msg: Msg) -> None:
                nonlocal count
                await msg.ack()
                count += 1
                if count == n:
                    done.set()

            config = ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=10_000,
            )
            sub = await js.subscribe(
                wire, durable=f"push{c}x{r}", stream="BENCH", cb=cb, manual_ack=True, config=config
            )
            await done.wait()
            await sub.unsubscribe()

        rates = await paired(r, n, ours, raw_pull, raw_push)
        for rates_of, rate in zip((ours_rates, pull_rates, push_rates), rates, strict=True):
            rates_of.append(rate)
    return [
        (f"consume c={c} vs raw pull fetch({2 * c})", ours_rates, pull_rates, 0.9),
        (f"  (info) c={c} vs raw push, unbounded", ours_rates, push_rates, None),
    ]


async def bench_memory(n: int, rounds: int) -> Result:
    rates = [await _memory_round(n) for _ in range(rounds)]
    return ("InMemoryEventBus publish -> handled", rates, None, None)


async def _memory_round(n: int) -> float:
    bus = InMemoryEventBus()
    done = asyncio.Event()
    count = 0

    async def handler(event: Event) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    await bus.subscribe("bench.>", handler, durable="mem")
    batch = events(n)

    async def run() -> None:
        await bus.publish_many(batch)
        await done.wait()

    rate = await timed(run, n)
    await bus.close()
    return rate


def report(results: list[Result], memory_target: float) -> bool:
    ok = True
    print(
        f"\n{'path':40} {'ours best':>10} {'raw best':>10} {'best/best':>9} "
        f"{'ratio':>6} {'(rounds)':>11}  target on the ratio"
    )
    for name, ours, raw, target in results:
        if raw is None:
            met = max(ours) >= memory_target
            print(
                f"{name:40} {max(ours):10,.0f} {'-':>10} {'-':>9} {'-':>6} {'':>11}  "
                f">= {memory_target:,.0f}/s {'ok' if met else 'MISSED'}"
            )
        else:
            ratios = [a / b for a, b in zip(ours, raw, strict=True)]
            ratio = statistics.median(ratios)
            met = target is None or ratio >= target
            goal = "(no target)" if target is None else f">= {target}x {'ok' if met else 'MISSED'}"
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(
                f"{name:40} {max(ours):10,.0f} {max(raw):10,.0f} {max(ours) / max(raw):9.2f} "
                f"{ratio:6.2f} {spread:>11}  {goal}"
            )
        ok = ok and met
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs, one round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    scale = 10 if args.quick else 1
    sizes = {"sequential": 3_000 // scale, "pipelined": 30_000 // scale, "consume": 20_000 // scale}
    began = time.monotonic()
    with server() as url:
        results = await bench_nats(url, sizes=sizes, rounds=rounds)
    results.append(await bench_memory(200_000 // scale, rounds))
    ok = report(results, memory_target=100_000)
    print(
        f"\n(ratio: median of {rounds} paired rounds, their range in brackets; "
        f"{time.monotonic() - began:.0f} s in all)"
    )
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
