"""Keyed SELECTs at 10 to 10,000 concurrent tasks: PostgresDatabase next to raw psycopg_pool.

Run: ``.venv/bin/python bench/database.py [--tasks 10 100 1000 10000] [--rounds 11]
[--queries 10000] [--variants raw ours ...] [--telemetry]``. Uses ``DATABASE_URL``
when set, else starts an ephemeral server (testing.servers).

At each concurrency C, C asyncio tasks start at once and share ``--queries`` keyed
``SELECT k, v FROM bench_kv WHERE k = %s`` (each task runs one after another until
they are all done); a query's latency counts from its start, so time spent queueing
for a connection counts. Every variant uses the same pool settings (min 5, max 25,
timeout 60 s, max_lifetime 300 s, max_idle 60 s, autocommit, dict rows, prepare
threshold 5):

- ``raw``: ``AsyncConnectionPool`` with ``getconn()`` / ``putconn()`` and
  ``conn.execute`` + ``fetchone``, no check (the fastest way to use psycopg_pool:
  ``pool.connection()`` adds a context manager and, without autocommit, a commit);
- ``ours``: ``PostgresDatabase.fetch_one`` with its defaults (``DB_POOL_CHECK=fast``);
- ``ours check=none`` / ``ours check=query``: the other connection-check modes;
- ``raw+check``: ``raw`` with ``check=AsyncConnectionPool.check_connection`` (a round
  trip per checkout, psycopg's documented way to never hand out a dead connection);
- ``raw connection()``: ``raw`` through ``async with pool.connection()``.

At each concurrency every variant's pool is opened and warmed up once and stays open.
Rounds are paired and alternate the order (``raw`` first in odd rounds, ``ours``
first in even ones); each round's ratio is ours / raw measured back to back, and the
median ratio is reported, since the machine is shared and noisy. Targets: ours /
raw >= 1.2x at 10,000 tasks and >= 1.0x at 10, zero errors.

``--telemetry`` (issue 15, point 5; ADR 0031): variants ``raw``, ``ours`` (which is
also telemetry off: ``build_infrastructure`` with ``OTEL_ENABLED=false`` wraps
nothing, checked at run time), ``traced no-op`` (``TracedDatabase`` on the API's
no-op providers) and ``traced SDK`` (an SDK TracerProvider + BatchSpanProcessor on a
dropping exporter and an SDK MeterProvider, ``bench/_otel.py``; its run ends with
``force_flush()``), at 1, 10 and 100 tasks unless ``--tasks`` says otherwise. At one
task the variants are interleaved query by query (query i runs through each in turn,
each timed), so noise hits them alike. Reported beside each traced variant: the
microseconds per query it adds to ``ours`` (1/q/s difference per round, median and
range).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from adapters.postgres import PostgresDatabase, PostgresSettings
from adapters.telemetry import Telemetry, TracedDatabase
from bench._otel import SdkProviders, check_off_is_unwrapped, noop_telemetry, sdk_telemetry
from ports.database import Database
from testing.fakes import RecordingLogger

SQL = "SELECT k, v FROM bench_kv WHERE k = %s"
POOL = {"min_size": 5, "max_size": 25, "timeout": 60.0, "max_lifetime": 300.0, "max_idle": 60.0}
KEYS = 10_000
URL = ""
Query = Callable[[int], Awaitable[Any]]


@contextlib.contextmanager
def database_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from testing.servers import postgres_server

    with postgres_server() as server:
        yield server.url


async def prepare(url: str, rows: int) -> None:
    db = PostgresDatabase(PostgresSettings(url=url, pool_min_size=1), RecordingLogger())
    await db.connect()
    await db.execute("DROP TABLE IF EXISTS bench_kv")
    await db.execute("CREATE TABLE bench_kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    await db.execute(
        "INSERT INTO bench_kv SELECT g, 'value-' || g FROM generate_series(0, %s) AS g",
        (rows - 1,),
    )
    await db.execute("ANALYZE bench_kv")
    await db.close()


async def measure(query: Query, tasks: int, queries: int) -> dict[str, float]:
    """``tasks`` tasks started at once share ``queries`` queries (closed loop)."""
    latencies: list[float] = []
    errors = 0
    left = queries

    async def worker(first: int) -> None:
        nonlocal errors, left
        key = first
        while left > 0:
            left -= 1
            began = time.perf_counter()
            try:
                row = await query(key % KEYS)
                if row is None:
                    raise RuntimeError("missing row")
            except Exception:
                errors += 1
            else:
                latencies.append(time.perf_counter() - began)
            key += tasks

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    wall = time.perf_counter() - began
    latencies.sort()
    return {
        "qps": queries / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "errors": float(errors),
        "wall_s": wall,
    }


@contextlib.asynccontextmanager
async def raw_pool(*, check: bool = False, context: bool = False) -> AsyncIterator[Query]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        URL,
        kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 5},
        open=False,
        check=AsyncConnectionPool.check_connection if check else None,
        **POOL,  # type: ignore[arg-type]
    )
    await pool.open(wait=True)

    async def query(key: int) -> Any:
        conn = await pool.getconn()
        try:
            cur = await conn.execute(SQL, (key,))
            return await cur.fetchone()
        finally:
            await pool.putconn(conn)

    async def query_cm(key: int) -> Any:
        async with pool.connection() as conn:
            cur = await conn.execute(SQL, (key,))
            return await cur.fetchone()

    try:
        yield query_cm if context else query
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def ours(
    *, check: str = "fast", wrap: Callable[[PostgresDatabase], Database] | None = None
) -> AsyncIterator[Query]:
    settings = PostgresSettings(
        url=URL,
        pool_min_size=5,
        pool_max_size=25,
        pool_timeout=60.0,
        max_lifetime=300.0,
        max_idle=60.0,
        pool_check=check,  # type: ignore[arg-type]
        prepare_threshold=5,
    )
    db = PostgresDatabase(settings, RecordingLogger(level="error"))
    port: Database = db if wrap is None else wrap(db)
    await port.connect()
    try:
        yield lambda key: port.fetch_one(SQL, (key,))
    finally:
        await port.close()


@functools.cache
def sdk() -> SdkProviders:
    """One SDK set-up for the process (tracer provider batching onto a dropping
    exporter, meter provider), as a service has."""
    return SdkProviders()


def traced(telemetry: Callable[[], Telemetry]) -> Callable[[PostgresDatabase], Database]:
    return lambda db: TracedDatabase(db, telemetry=telemetry())


VARIANTS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Query]]] = {
    "raw": raw_pool,
    "ours": ours,
    "ours check=none": lambda: ours(check="none"),
    "ours check=query": lambda: ours(check="query"),
    "raw+check": lambda: raw_pool(check=True),
    "raw connection()": lambda: raw_pool(context=True),
    # issue 15: "ours" is also telemetry off (OTEL_ENABLED=false wraps nothing)
    "traced no-op": lambda: ours(wrap=traced(noop_telemetry)),
    "traced SDK": lambda: ours(wrap=traced(lambda: sdk_telemetry(sdk()))),
}
TELEMETRY_VARIANTS: Final = ["raw", "ours", "traced no-op", "traced SDK"]
TARGETS = {10: 1.0, 10_000: 1.2}
"""ours / raw median ratio required at a concurrency (none elsewhere: reported only)."""


def flushed(result: dict[str, float], queries: int) -> None:
    """The SDK's spans still queued go through the span processor on the traced
    side's clock (its export thread ran beside the run until now)."""
    began = time.perf_counter()
    sdk().tracer_provider.force_flush()
    result["wall_s"] += time.perf_counter() - began
    result["qps"] = queries / result["wall_s"]


async def measure_interleaved(
    queries_of: dict[str, Query], queries: int, round_: int
) -> dict[str, dict[str, float]]:
    """One task; query ``i`` runs through every variant in turn, the order rotating."""
    names = list(queries_of)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    errors = dict.fromkeys(names, 0.0)
    for i in range(queries):
        for k in range(len(names)):
            name = names[(i + round_ + k) % len(names)]
            began = time.perf_counter()
            try:
                if await queries_of[name](i % KEYS) is None:
                    raise RuntimeError("missing row")
            except Exception:
                errors[name] += 1
            else:
                latencies[name].append(time.perf_counter() - began)
    out = {}
    for name in names:
        spent = sorted(latencies[name])
        wall = sum(spent)
        out[name] = {
            "qps": queries / wall,
            "p50_ms": 1000 * spent[len(spent) // 2],
            "p99_ms": 1000 * spent[int(len(spent) * 0.99)],
            "errors": errors[name],
            "wall_s": wall,
        }
        if name == "traced SDK":
            flushed(out[name], queries)
    return out


async def bench_one(tasks: int, queries: int, rounds: int, names: list[str]) -> bool:
    """Paired, alternating rounds at one concurrency; True if the targets are met.

    Every variant's pool is opened and warmed up (grown, statements prepared) first and
    stays open, so consecutive runs of a pair are measured seconds apart."""
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    print(f"\n== {tasks} concurrent tasks, {queries} queries per run ==", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        queries_of = {n: await stack.enter_async_context(VARIANTS[n]()) for n in names}
        for query in queries_of.values():
            await measure(query, min(tasks, 1000), 2000)
        for r in range(rounds):
            if tasks == 1:
                # one task: query i runs through every variant in turn (the order
                # rotating with i), each timed on its own, so a slow spell of the
                # shared machine hits all of them alike
                round_ = await measure_interleaved(queries_of, queries, r)
            else:
                order = names if r % 2 == 0 else names[::-1]
                round_ = {}
                for name in order:
                    round_[name] = await measure(queries_of[name], tasks, queries)
                    if name == "traced SDK":
                        flushed(round_[name], queries)
            for name in names:
                result = round_[name]
                results[name].append(result)
                print(
                    f"  round {r + 1:2} {name:<18} {result['qps']:8.0f} q/s  "
                    f"p50 {result['p50_ms']:8.2f} ms  p99 {result['p99_ms']:8.2f} ms  "
                    f"errors {result['errors']:.0f}",
                    flush=True,
                )
    print(
        f"{'variant':<18} {'q/s':>8} {'us/q':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  "
        "ratio/raw (rounds); traced: us/query beyond ours, median (min..max)"
    )
    ok = True
    for name, runs in results.items():
        qps = statistics.median(run["qps"] for run in runs)
        p50 = statistics.median(run["p50_ms"] for run in runs)
        p99 = statistics.median(run["p99_ms"] for run in runs)
        errors = sum(run["errors"] for run in runs)
        ratio = ""
        if name != "raw" and "raw" in results:
            ratios = [a["qps"] / b["qps"] for a, b in zip(runs, results["raw"], strict=True)]
            median = statistics.median(ratios)
            ratio = f"  {median:5.2f}x (rounds {' '.join(f'{x:.2f}' for x in ratios)})"
            target = TARGETS.get(tasks)
            if name == "ours" and target is not None:
                met = median >= target
                ok &= met
                ratio += f"  {'OK' if met else 'BELOW'} {target}x"
        ok &= not (name == "ours" and errors)
        if name.startswith("traced") and "ours" in results:
            extra = [
                1e6 / a["qps"] - 1e6 / b["qps"] for a, b in zip(runs, results["ours"], strict=True)
            ]
            ratio += (
                f"  {statistics.median(extra):+.1f} us/query ({min(extra):+.1f}..{max(extra):+.1f})"
            )
        print(f"{name:<18} {qps:8.0f} {1e6 / qps:7.1f} {p50:8.2f} {p99:8.2f} {errors:7.0f}{ratio}")
    return ok


async def main(tasks: list[int], rounds: int, queries: int, names: list[str]) -> int:
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variants: {unknown}; known: {list(VARIANTS)}")
        return 2
    global URL
    ok = True
    with database_url() as URL:
        await prepare(URL, KEYS)
        for n in tasks:
            ok &= await bench_one(n, max(queries, n), rounds, names)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--tasks", type=int, nargs="+", help="concurrencies (default: 10 100 1000 10000)"
    )
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--queries", type=int, default=10_000, help="queries per run")
    parser.add_argument(
        "--variants", nargs="+", help=f"of {', '.join(VARIANTS)} (default: raw ours)"
    )
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help=f"issue 15: variants {', '.join(TELEMETRY_VARIANTS)}, tasks 1 10 100 by default",
    )
    args = parser.parse_args()
    variants = args.variants or (TELEMETRY_VARIANTS if args.telemetry else ["raw", "ours"])
    tasks = args.tasks or ([1, 10, 100] if args.telemetry else [10, 100, 1_000, 10_000])
    if args.telemetry:
        print(check_off_is_unwrapped())
    code = asyncio.run(main(tasks, args.rounds, args.queries, variants))
    if sdk.cache_info().currsize:
        sdk().shutdown()
    sys.exit(code)
