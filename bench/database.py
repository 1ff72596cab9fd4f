"""10,000 concurrent keyed SELECTs: PostgresDatabase next to a raw psycopg pool.

Run: ``.venv/bin/python bench/database.py [--tasks 10000] [--rounds 3]``. Uses
``DATABASE_URL`` when set, else starts an ephemeral server (testing.servers).

Each run starts ``--tasks`` asyncio tasks at once; each runs one
``SELECT k, v FROM bench_kv WHERE k = %s`` and records its latency (from the task's
start, so time spent queueing for a connection counts). Variants, all with the
same pool (min 5, max 25, timeout 60 s, dict rows, prepare threshold 5):

- ``raw autocommit``: ``AsyncConnectionPool(kwargs={"autocommit": True})`` and
  ``async with pool.connection() as conn: await conn.execute(...)``, no check;
- ``raw autocommit+check``: the same with ``check=AsyncConnectionPool.check_connection``
  (a round trip per checkout: psycopg's documented way to never get a dead connection);
- ``raw default``: the pool used the default way (no autocommit: BEGIN, SELECT, COMMIT);
- ``ours``: ``PostgresDatabase.fetch_one`` with its default ``DB_POOL_CHECK=fast``;
- ``ours check=none`` / ``ours check=query``: the other connection-check modes.

Rounds are interleaved and each variant's median round is reported, since the
machine is shared and noisy. Targets: ours >= 0.9x raw autocommit, zero errors;
ours >= 1.5x raw default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from adapters.postgres import PostgresDatabase, PostgresSettings
from testing.fakes import RecordingLogger

SQL = "SELECT k, v FROM bench_kv WHERE k = %s"
POOL = {"min_size": 5, "max_size": 25, "timeout": 60.0, "max_lifetime": 300.0, "max_idle": 60.0}
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


async def measure(query: Query, tasks: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0

    async def one(key: int) -> None:
        nonlocal errors
        began = time.perf_counter()
        try:
            row = await query(key)
            if row is None:
                raise RuntimeError("missing row")
        except Exception:
            errors += 1
            return
        latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(tasks)))
    wall = time.perf_counter() - began
    latencies.sort()
    return {
        "qps": tasks / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "errors": float(errors),
        "wall_s": wall,
    }


async def run_raw(url: str, tasks: int, *, autocommit: bool, check: bool) -> dict[str, float]:
    kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row} if autocommit else {}
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        kwargs=kwargs,
        open=False,
        check=AsyncConnectionPool.check_connection if check else None,
        **POOL,  # type: ignore[arg-type]
    )
    await pool.open(wait=True)

    async def query(key: int) -> Any:
        async with pool.connection() as conn:
            cur = await conn.execute(SQL, (key,))
            return await cur.fetchone()

    try:
        await measure(query, 1000)  # warm up: grow the pool, prepare statements
        return await measure(query, tasks)
    finally:
        await pool.close()


async def run_ours(url: str, tasks: int, *, check: str) -> dict[str, float]:
    settings = PostgresSettings(
        url=url,
        pool_min_size=5,
        pool_max_size=25,
        pool_timeout=60.0,
        pool_check=check,  # type: ignore[arg-type]
    )
    db = PostgresDatabase(settings, RecordingLogger(level="error"))
    await db.connect()

    async def query(key: int) -> Any:
        return await db.fetch_one(SQL, (key,))

    try:
        await measure(query, 1000)
        return await measure(query, tasks)
    finally:
        await db.close()


VARIANTS: dict[str, Callable[[str, int], Awaitable[dict[str, float]]]] = {
    "raw autocommit": lambda url, n: run_raw(url, n, autocommit=True, check=False),
    "raw autocommit+check": lambda url, n: run_raw(url, n, autocommit=True, check=True),
    "raw default": lambda url, n: run_raw(url, n, autocommit=False, check=False),
    "ours": lambda url, n: run_ours(url, n, check="fast"),
    "ours check=none": lambda url, n: run_ours(url, n, check="none"),
    "ours check=query": lambda url, n: run_ours(url, n, check="query"),
}


async def main(tasks: int, rounds: int, only: list[str]) -> int:
    names = [n for n in VARIANTS if not only or n in only]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with database_url() as url:
        await prepare(url, tasks)
        for r in range(rounds):
            for name in names:
                result = await VARIANTS[name](url, tasks)
                results[name].append(result)
                print(
                    f"  round {r + 1} {name:<22} {result['qps']:8.0f} q/s  "
                    f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                    f"errors {result['errors']:.0f}",
                    flush=True,
                )
    median = {
        name: {
            key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "errors"
        }
        | {"errors": sum(run["errors"] for run in runs)}
        for name, runs in results.items()
    }
    print(f"\n{tasks} concurrent tasks, median of {rounds} rounds (errors summed):")
    print(f"{'variant':<22} {'q/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, m in median.items():
        print(
            f"{name:<22} {m['qps']:8.0f} {m['p50_ms']:8.1f} {m['p99_ms']:8.1f} {m['errors']:7.0f}"
        )

    def ratio(a: str, b: str) -> float | None:
        if a in median and b in median:
            return median[a]["qps"] / median[b]["qps"]
        return None

    print()
    checks = [
        ("ours / raw autocommit", ratio("ours", "raw autocommit"), 0.9),
        ("ours / raw default", ratio("ours", "raw default"), 1.5),
        ("ours check=none / raw autocommit", ratio("ours check=none", "raw autocommit"), 0.9),
        (
            "ours check=query / raw autocommit+check",
            ratio("ours check=query", "raw autocommit+check"),
            0.9,
        ),
        (
            "raw autocommit+check / raw autocommit (cost of a checking round trip)",
            ratio("raw autocommit+check", "raw autocommit"),
            None,
        ),
        ("ours / ours check=none (cost of the fast check)", ratio("ours", "ours check=none"), None),
    ]
    failed = False
    for label, value, target in checks:
        if value is None:
            continue
        verdict = "" if target is None else ("  OK" if value >= target else f"  BELOW {target}x")
        failed |= target is not None and value < target
        print(f"{label:<72} {value:5.2f}x{verdict}")
    if median.get("ours", {}).get("errors", 0):
        print("ours had errors")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=[], help="variant names to run")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.tasks, args.rounds, args.only)))
