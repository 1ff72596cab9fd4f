"""PostgresDatabase under faults, on a dedicated restartable server.

Restart under load, more callers than the pool can serve, tasks cancelled mid-query,
a dead connection after a restart, health checks while the server is down. Each test
ends by checking the pool for leaks: every connection back in the pool, nothing in
flight, and the server holding exactly the pool's connections.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from adapters.postgres import PostgresDatabase, PostgresSettings
from domain_errors import ServiceUnavailable
from testing.fakes import RecordingLogger
from testing.servers import PostgresServer, postgres_server
from tests.helpers import wait_until, wait_until_async

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this module's own, free to be stopped and restarted."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def running(pg: PostgresServer) -> Iterator[PostgresServer]:
    """The dedicated server, started again after the test if the test stopped it."""
    yield pg
    pg.start()


def make_db(pg: PostgresServer, **overrides: Any) -> PostgresDatabase:
    """A database on ``pg`` with a unique application_name (to count its connections)."""
    settings = PostgresSettings(
        url=pg.url,
        application_name=f"fault_{uuid.uuid4().hex[:8]}",
        connect_retries=2,
        connect_backoff=0.05,
        **overrides,
    )
    return PostgresDatabase(settings, RecordingLogger())


async def server_connections(monitor: PostgresDatabase, app: str) -> int:
    """How many connections the server holds for application ``app``."""
    return int(
        await monitor.fetch_value(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        )
    )


async def assert_no_leak(db: PostgresDatabase, pg: PostgresServer) -> None:
    """Every pooled connection is back and idle, and the server holds exactly those."""

    def settled() -> bool:
        stats = db.pool_stats()
        return (
            stats["in_flight"] == 0
            and stats["requests_waiting"] == 0
            and stats["pool_available"] == stats["pool_size"]
        )

    await wait_until(settled, timeout=10, what=f"pool settles: {db.pool_stats()}")
    stats = db.pool_stats()
    assert 0 < stats["pool_size"] <= db.settings.pool_max_size
    monitor = make_db(pg, pool_min_size=1, pool_max_size=1)
    await monitor.connect()
    try:
        app = db.settings.application_name
        await wait_until_async(
            lambda: _equals(server_connections(monitor, app), db.pool_stats()["pool_size"]),
            timeout=10,
            what="the server holds exactly the pool's connections",
        )
    finally:
        await monitor.close()


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


@attrs.define
class Call:
    """One call made by the load generator: when it ran and how it ended."""

    started: float
    ended: float
    error: BaseException | None


class TestRestartUnderLoad:
    """PostgreSQL restarted while 20 tasks keep querying."""

    async def test_failures_only_during_the_outage_and_no_leak(self, running: PostgresServer):
        """Only calls overlapping the outage fail (ServiceUnavailable); every later one succeeds."""
        db = make_db(running, pool_min_size=5, pool_max_size=10, pool_timeout=3.0)
        await db.connect()
        calls: list[Call] = []
        stop = asyncio.Event()

        async def worker(i: int) -> None:
            while not stop.is_set():
                began = time.monotonic()
                error: BaseException | None = None
                try:
                    if i % 2:
                        assert await db.fetch_value("SELECT %s::int", (i,)) == i
                    else:
                        async with db.transaction() as tx:
                            await tx.fetch_value("SELECT %s::int", (i,))
                            assert await tx.fetch_value("SELECT %s::int + 1", (i,)) == i + 1
                except ServiceUnavailable as exc:
                    error = exc
                calls.append(Call(began, time.monotonic(), error))

        workers = [asyncio.create_task(worker(i)) for i in range(20)]
        try:
            await wait_until(lambda: len(calls) >= 300, timeout=10, what="load before restart")
            down = time.monotonic()
            await asyncio.to_thread(running.restart)
            up = time.monotonic()

            def ok_after_up() -> int:
                return sum(1 for c in calls if c.started > up and c.error is None)

            await wait_until(lambda: ok_after_up() >= 300, timeout=15, what="load after restart")
        finally:
            stop.set()
            await asyncio.gather(*workers)

        failures = [c for c in calls if c.error is not None]
        after = [c for c in calls if c.started > up]
        first_ok = min(c.ended for c in after if c.error is None)
        print(
            f"\nrestart under load: {len(calls)} calls, {len(failures)} failed, outage "
            f"{(up - down) * 1000:.0f} ms, first success after the restart "
            f"{(first_ok - up) * 1000:.0f} ms later, failures between "
            f"{min((c.started - down for c in failures), default=0) * 1000:.0f} and "
            f"{max((c.ended - down for c in failures), default=0) * 1000:.0f} ms after it began; "
            f"{db.pool_stats()['checks_failed']} dead connections caught by the check"
        )
        assert all(c.ended >= down and c.started <= up for c in failures), "failure outside outage"
        assert all(c.error is None for c in after), "a call after the outage failed"
        assert len(after) >= 300
        await assert_no_leak(db, running)
        await db.close()


class TestDeadConnectionsAfterRestart:
    """After a restart the idle pooled connections are dead; the check keeps them back."""

    @pytest.mark.parametrize("check", ["fast", "query"])
    async def test_checked_pool_never_hands_out_a_dead_connection(
        self, running: PostgresServer, check: str
    ):
        """With a check, the first calls after a restart all succeed."""
        db = make_db(running, pool_min_size=3, pool_max_size=3, pool_check=check)
        await db.connect()
        await asyncio.to_thread(running.restart)
        results = await asyncio.gather(*(db.fetch_value("SELECT 1") for _ in range(3)))
        assert results == [1, 1, 1]
        assert db.pool_stats()["checks_failed"] >= 1
        await assert_no_leak(db, running)
        await db.close()

    async def test_unchecked_pool_hands_out_a_dead_connection(self, running: PostgresServer):
        """Without a check (DB_POOL_CHECK=none) the first call after a restart fails."""
        db = make_db(running, pool_min_size=1, pool_max_size=1, pool_check="none")
        await db.connect()
        await asyncio.to_thread(running.restart)
        with pytest.raises(ServiceUnavailable):
            await db.fetch_value("SELECT 1")
        assert await db.fetch_value("SELECT 1") == 1  # the pool replaced it
        await db.close()


class TestPoolExhaustion:
    """More concurrent callers than the pool can serve within its timeout."""

    async def test_excess_callers_get_service_unavailable_not_a_hang(self, running: PostgresServer):
        """Callers that wait past DB_POOL_TIMEOUT_S get ServiceUnavailable, promptly."""
        db = make_db(running, pool_min_size=2, pool_max_size=2, pool_timeout=0.3)
        await db.connect()
        began = time.monotonic()
        results = await asyncio.gather(
            *(db.fetch_value("SELECT pg_sleep(0.6)") for _ in range(10)), return_exceptions=True
        )
        elapsed = time.monotonic() - began
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 8
        assert all(isinstance(e, ServiceUnavailable) for e in errors)
        assert all(e.details["reason"] == "pool_timeout" for e in errors)  # type: ignore[attr-defined]
        assert elapsed < 2.5
        assert await db.fetch_value("SELECT 2") == 2
        await assert_no_leak(db, running)
        await db.close()


class TestCancellation:
    """Tasks cancelled mid-query or while queued for a connection."""

    async def test_cancelled_tasks_leak_no_connection(self, running: PostgresServer):
        """Queries are cancelled on the server and every connection comes back usable."""
        db = make_db(running, pool_min_size=3, pool_max_size=3, pool_timeout=5.0)
        await db.connect()
        app = db.settings.application_name
        monitor = make_db(running, pool_min_size=1, pool_max_size=1)
        await monitor.connect()

        async def in_transaction() -> Any:
            async with db.transaction() as tx:
                return await tx.fetch_value("SELECT pg_sleep(30)")

        sleepers = [asyncio.create_task(db.fetch_value("SELECT pg_sleep(30)")) for _ in range(2)]
        sleepers.append(asyncio.create_task(in_transaction()))
        count_sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active' AND query LIKE %s"
        )

        async def active() -> int:
            return int(await monitor.fetch_value(count_sql, (app, "SELECT pg_sleep%%")))

        await wait_until_async(lambda: _equals(active(), 3), timeout=10, what="3 sleeping")
        queued = [asyncio.create_task(db.fetch_value("SELECT 1")) for _ in range(4)]
        await wait_until(lambda: db.pool_stats()["requests_waiting"] == 4, timeout=5)
        began = time.monotonic()
        for task in sleepers + queued:
            task.cancel()
        results = await asyncio.gather(*sleepers, *queued, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        await wait_until_async(lambda: _equals(active(), 0), timeout=10, what="queries cancelled")
        assert time.monotonic() - began < 10
        await assert_no_leak(db, running)
        assert await asyncio.gather(*(db.fetch_value("SELECT 3") for _ in range(3))) == [3] * 3
        await monitor.close()
        await db.close()

    async def test_cancellation_under_load_leaks_nothing(self, running: PostgresServer):
        """2,000 callers on a 4-connection pool, hundreds cancelled at random moments
        (queued at the admission gate, waiting in the pool, mid-query, inside a
        transaction): every other caller gets its answer, nobody is left waiting, and
        every connection is back in the pool."""
        db = make_db(running, pool_min_size=2, pool_max_size=4, pool_timeout=30.0)
        await db.connect()
        rng = random.Random(20260512)

        async def call(i: int) -> Any:
            if i % 4 == 0:
                async with db.transaction() as tx:
                    await tx.execute("SELECT pg_sleep(0.001)")
                    return await tx.fetch_value("SELECT %s::int", (i,))
            return await db.fetch_value("SELECT %s::int FROM pg_sleep(0.001)", (i,))

        tasks = [asyncio.create_task(call(i)) for i in range(2000)]
        cancelled: set[int] = set()
        for _ in range(150):
            await asyncio.sleep(rng.random() * 0.004)
            for i in rng.sample(range(len(tasks)), 3):
                if not tasks[i].done():
                    tasks[i].cancel()
                    cancelled.add(i)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        stats = db.pool_stats()
        assert stats["admission_waiting"] == 0, stats
        for i, result in enumerate(results):
            if isinstance(result, asyncio.CancelledError):
                assert i in cancelled
            else:
                assert result == i, (i, result)
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) >= 100
        await assert_no_leak(db, running)
        assert await asyncio.gather(
            *(db.fetch_value("SELECT %s::int", (n,)) for n in range(50))
        ) == list(range(50))
        await db.close()


class TestSustainedLoad:
    """Connections passed from caller to caller under load still follow the pool's rules."""

    async def test_connections_expire_under_sustained_load(self, running: PostgresServer):
        """With max_lifetime 0.3 s and 30 callers never letting the pool rest, the
        connections are still replaced; no call fails and nothing leaks."""
        db = make_db(running, pool_min_size=1, pool_max_size=3, max_lifetime=0.3)
        await db.connect()
        pids: set[int] = set()
        stop = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                pids.add(int(await db.fetch_value("SELECT pg_backend_pid()")))

        workers = [asyncio.create_task(worker()) for _ in range(30)]
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*workers)
        assert len(pids) > 3 * 2, pids  # every connection replaced at least once
        await assert_no_leak(db, running)
        assert db.pool_stats()["spare"] == 0
        await db.close()


class TestHealthWhileDown:
    """health_check against a stopped server, then after it is back."""

    async def test_health_check_fails_while_down_and_recovers(self, running: PostgresServer):
        """ServiceUnavailable within the health timeout while down; healthy once back."""
        db = make_db(running, pool_min_size=1, pool_max_size=2, health_timeout=1.0)
        await db.connect()
        await db.health_check()
        await asyncio.to_thread(running.stop)
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await db.health_check()
        assert time.monotonic() - began < 2.0
        await asyncio.to_thread(running.start)

        async def healthy() -> bool:
            try:
                await db.health_check()
            except ServiceUnavailable:
                return False
            return True

        await wait_until_async(healthy, timeout=5, what="healthy again")
        await assert_no_leak(db, running)
        await db.close()
