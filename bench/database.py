"""Keyed SELECTs at 10 to 10,000 concurrent tasks: PostgresDatabase next to raw psycopg_pool.

Run: ``.venv/bin/python bench/database.py [--tasks 10 100 1000 10000] [--rounds 11]
[--queries 10000] [--variants raw ours ...]``. Uses ``DATABASE_URL`` when set, else
starts an ephemeral server (testing.servers).

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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from adapters.postgres import PostgresDatabase, PostgresSettings
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
async def ours(*, check: str = "fast") -> AsyncIterator[Query]:
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
    await db.connect()
    try:
        yield lambda key: db.fetch_one(SQL, (key,))
    finally:
        await db.close()


VARIANTS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Query]]] = {
    "raw": raw_pool,
    "ours": ours,
    "ours check=none": lambda: ours(check="none"),
    "ours check=query": lambda: ours(check="query"),
    "raw+check": lambda: raw_pool(check=True),
    "raw connection()": lambda: raw_pool(context=True),
}
TARGETS = {10: 1.0, 10_000: 1.2}
"""ours / raw median ratio required at a concurrency (none elsewhere: reported only)."""


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
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                result = await measure(queries_of[name], tasks, queries)
                results[name].append(result)
                print(
                    f"  round {r + 1:2} {name:<18} {result['qps']:8.0f} q/s  "
                    f"p50 {result['p50_ms']:8.2f} ms  p99 {result['p99_ms']:8.2f} ms  "
                    f"errors {result['errors']:.0f}",
                    flush=True,
                )
    print(f"{'variant':<18} {'q/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  ratio/raw")
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
        print(f"{name:<18} {qps:8.0f} {p50:8.2f} {p99:8.2f} {errors:7.0f}{ratio}")
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
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 100, 1_000, 10_000])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--queries", type=int, default=10_000, help="queries per run")
    parser.add_argument(
        "--variants", nargs="+", default=["raw", "ours"], help=f"of {', '.join(VARIANTS)}"
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.tasks, args.rounds, args.queries, args.variants)))
