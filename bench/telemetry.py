"""Telemetry overhead on the in-memory adapters (issue 15, ADR 0031).

    .venv/bin/python bench/telemetry.py [--quick]

Per query (``SqliteDatabase.fetch_value``) and per message (``InMemoryEventBus``
publish_many -> handler), median of ``--rounds`` rounds, side by side:

- plain: the adapter unwrapped (telemetry off: ``OTEL_ENABLED=false`` builds this);
- traced, no SDK: wrapped, the API's no-op providers;
- traced, SDK: wrapped, an SDK TracerProvider with a BatchSpanProcessor on an
  exporter that drops everything, and an SDK MeterProvider with an in-memory reader.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.memory import InMemoryEventBus, SqliteDatabase
from adapters.telemetry import Telemetry, TracedDatabase, TracedPublisher, TracedSubscriber
from bench._otel import sdk_telemetry
from ports.events import Event


async def per_query(wrap: Callable[[SqliteDatabase], Any], n: int) -> float:
    inner = SqliteDatabase()
    await inner.connect()
    db = wrap(inner)
    start = time.perf_counter()
    for i in range(n):
        await db.fetch_value("SELECT %s", (i,))
    elapsed = time.perf_counter() - start
    await inner.close()
    return elapsed / n


async def per_message(wrap: Callable[[InMemoryEventBus], tuple[Any, Any]], n: int) -> float:
    bus = InMemoryEventBus()
    publisher, subscriber = wrap(bus)
    done = asyncio.Event()
    seen = 0

    async def handler(event: Event) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    await subscriber.subscribe("bench.x", handler, durable="b")
    events = [
        Event(type="bench.x", source="b", organization_id="o", data={"i": i}) for i in range(n)
    ]
    start = time.perf_counter()
    await publisher.publish_many(events)
    await done.wait()
    elapsed = time.perf_counter() - start
    await bus.close()
    return elapsed / n


def database_wrapper(tel: Telemetry | None) -> Callable[[SqliteDatabase], Any]:
    if tel is None:
        return lambda d: d
    return lambda d: TracedDatabase(d, telemetry=tel)


def bus_wrapper(tel: Telemetry | None) -> Callable[[InMemoryEventBus], tuple[Any, Any]]:
    if tel is None:
        return lambda b: (b, b)
    return lambda b: (TracedPublisher(b, telemetry=tel), TracedSubscriber(b, telemetry=tel))


async def median(job: Callable[[], Awaitable[float]], rounds: int) -> float:
    return statistics.median([await job() for _ in range(rounds)])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    nq, nm = (2_000, 2_000) if args.quick else (20_000, 20_000)
    noop = Telemetry()
    sdk = sdk_telemetry()
    rows = []
    for label, tel in (("plain", None), ("traced, no SDK", noop), ("traced, SDK", sdk)):
        q = await median(lambda: per_query(database_wrapper(tel), nq), args.rounds)  # noqa: B023
        m = await median(lambda: per_message(bus_wrapper(tel), nm), args.rounds)  # noqa: B023
        rows.append((label, q, m))
    base_q, base_m = rows[0][1], rows[0][2]
    print(f"{'':16} {'per query':>12} {'overhead':>10} {'per message':>12} {'overhead':>10}")
    for label, q, m in rows:
        print(
            f"{label:16} {q * 1e6:10.1f}us {(q - base_q) * 1e6:+8.1f}us "
            f"{m * 1e6:10.1f}us {(m - base_m) * 1e6:+8.1f}us"
        )


if __name__ == "__main__":
    asyncio.run(main())
