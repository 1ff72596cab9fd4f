"""PostgresDatabase against a real server: connecting, settings, timeouts, logging."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from adapters.memory import InMemoryConfig
from adapters.postgres import PostgresDatabase, PostgresSettings
from domain_errors import ConfigurationError, Conflict, ServiceUnavailable
from testing.fakes import RecordingLogger
from testing.servers import PostgresServer, free_port
from tests.helpers import wait_until, wait_until_async

pytestmark = pytest.mark.integration

_PASSWORD = "hunter2-not-in-logs"  # a marker, checked never to leak


def make_db(url: str, logger: RecordingLogger | None = None, **overrides: Any) -> PostgresDatabase:
    options: dict[str, Any] = {"pool_min_size": 1, "pool_max_size": 4, **overrides}
    settings = PostgresSettings(url=url, **options)
    return PostgresDatabase(settings, logger if logger is not None else RecordingLogger())


class _RecordingClock:
    """A clock whose sleep returns at once and remembers how long it was asked to wait."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def now(self) -> Any:  # pragma: no cover - unused by connect()
        raise NotImplementedError

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


class TestConnect:
    """connect(): retries with backoff, then gives up naming the host, not the password."""

    async def test_waits_for_a_server_that_comes_up_late(self):
        """A server started after connect() began (and failed at least once) is connected to."""
        server = PostgresServer()
        logger = RecordingLogger()
        db = make_db(server.url, logger, connect_retries=12, connect_backoff=0.1)
        try:
            connecting = asyncio.create_task(db.connect())
            await wait_until(
                lambda: bool(logger.find("database not reachable, retrying")),
                timeout=5,
                what="a failed attempt",
            )
            assert not connecting.done()
            await asyncio.to_thread(server.start)
            await asyncio.wait_for(connecting, 20)
            await db.health_check()
            retries = logger.find("database not reachable, retrying", level="warning")
            assert retries[0].tags["attempt"] == 1
            logger.assert_logged("database connected", level="info")
            await db.close()
        finally:
            await asyncio.to_thread(server.close)

    async def test_gives_up_on_a_server_that_never_comes_up(self):
        """ServiceUnavailable after the retries, naming host and port but never the password."""
        port = free_port()
        logger = RecordingLogger()
        url = f"postgresql://app:{_PASSWORD}@127.0.0.1:{port}/orders"
        db = make_db(url, logger, connect_retries=4, connect_backoff=0.05)
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            await db.connect()
        assert time.monotonic() - began < 5
        message = str(caught.value)
        assert f"127.0.0.1:{port}/orders" in message
        assert "4 attempts" in message
        assert _PASSWORD not in message
        assert caught.value.__cause__ is not None
        assert len(logger.find("database not reachable, retrying")) == 3
        assert all(_PASSWORD not in str(r.to_dict()) for r in logger.records)
        assert _PASSWORD not in repr(db) + repr(db.settings)

    async def test_backoff_is_exponential_on_the_injected_clock(self):
        """The waits between attempts double from DB_CONNECT_BACKOFF_S (plus some jitter)."""
        clock = _RecordingClock()
        settings = PostgresSettings(
            url=f"postgresql://127.0.0.1:{free_port()}/x", connect_retries=5, connect_backoff=1.0
        )
        db = PostgresDatabase(settings, RecordingLogger(), clock)
        with pytest.raises(ServiceUnavailable):
            await db.connect()
        assert len(clock.sleeps) == 4
        for sleep, base in zip(clock.sleeps, [1.0, 2.0, 4.0, 8.0], strict=True):
            assert base <= sleep <= base + 0.25

    async def test_connect_is_idempotent_and_not_after_close(self, postgres_url: str):
        """connect() twice is harmless; a closed database cannot be reconnected."""
        db = make_db(postgres_url)
        await db.connect()
        await db.connect()
        assert await db.fetch_value("SELECT 1") == 1
        await db.close()
        with pytest.raises(ServiceUnavailable):
            await db.connect()


async def _server_connections(monitor: PostgresDatabase, app: str) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    return int(await monitor.fetch_value(sql, (app,)))


class TestConnectConcurrency:
    """connect() racing itself or being cancelled leaves exactly one pool or none."""

    async def test_concurrent_connects_open_one_pool(self, postgres_url: str):
        """Two connect() calls at once share one attempt: one pool on the server."""
        app = f"twice_{uuid.uuid4().hex[:8]}"
        db = make_db(postgres_url, application_name=app, pool_min_size=2)
        monitor = make_db(postgres_url)
        await asyncio.gather(db.connect(), db.connect(), monitor.connect())
        assert await _server_connections(monitor, app) == 2
        await asyncio.gather(db.close(), monitor.close())

    async def test_cancelled_while_filling_the_pool_leaves_nothing_open(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ):
        """Cancelling connect() after the probe closes the half-open pool."""
        filling = asyncio.Event()
        original = AsyncConnectionPool.open

        async def open_and_hang(self: Any, wait: bool = False, timeout: float = 30.0) -> None:
            await original(self, wait=False)
            filling.set()
            await asyncio.Event().wait()

        app = f"cancel_{uuid.uuid4().hex[:8]}"
        db = make_db(postgres_url, application_name=app, pool_min_size=2)
        monitor = make_db(postgres_url)
        await monitor.connect()
        monkeypatch.setattr(AsyncConnectionPool, "open", open_and_hang)
        connecting = asyncio.create_task(db.connect())
        await filling.wait()
        await wait_until_async(
            lambda: _is(_server_connections(monitor, app), 2), timeout=5, what="pool filling"
        )
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        await wait_until_async(
            lambda: _is(_server_connections(monitor, app), 0), timeout=5, what="pool closed"
        )
        with pytest.raises(ServiceUnavailable):
            await db.fetch_value("SELECT 1")  # still not connected
        await monitor.close()


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


class TestSettings:
    """Pool and session settings reach psycopg and the server."""

    async def test_defaults_from_config(self, postgres_url: str):
        """With only DATABASE_URL set, the pool is min 5 / max 25 / lifetime 300 s."""
        config = InMemoryConfig({"DATABASE_URL": postgres_url, "SERVICE_NAME": "orders"})
        db = PostgresDatabase.from_config(config, logger=RecordingLogger())
        await db.connect()
        stats = db.pool_stats()
        assert (stats["pool_min"], stats["pool_max"]) == (5, 25)
        assert db.settings.max_lifetime == 300.0
        assert await db.fetch_value("SELECT current_setting('application_name')") == "orders"
        assert await db.fetch_value("SHOW statement_timeout") == "0"
        await db.close()

    async def test_connections_are_replaced_after_their_lifetime(self, postgres_url: str):
        """DB_POOL_MAX_LIFETIME_S retires a connection: a later call gets a new backend."""
        db = make_db(postgres_url, pool_min_size=1, pool_max_size=1, max_lifetime=0.2)
        await db.connect()
        first = await db.fetch_value("SELECT pg_backend_pid()")

        async def replaced() -> bool:
            return bool(await db.fetch_value("SELECT pg_backend_pid()") != first)

        await wait_until_async(replaced, timeout=5, interval=0.05, what="a new backend")
        await db.close()

    async def test_statement_timeout_raises_service_unavailable(self, postgres_url: str):
        """DB_STATEMENT_TIMEOUT_MS cancels a long statement: ServiceUnavailable, reason given."""
        url = f"{postgres_url}?options=-c%20search_path%3Dpg_catalog"
        db = make_db(url, statement_timeout_ms=100)
        await db.connect()
        assert await db.fetch_value("SHOW statement_timeout") == "100ms"
        assert await db.fetch_value("SHOW search_path") == "pg_catalog"  # URL options kept
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            await db.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - began < 2
        assert caught.value.details["reason"] == "statement_timeout"
        assert await db.fetch_value("SELECT 7") == 7
        await db.close()

    async def test_single_statements_skip_begin_and_commit(self, postgres_url: str):
        """Outside transaction() a statement is its own implicit transaction (no BEGIN)."""
        db = make_db(postgres_url)
        await db.connect()
        same = "SELECT now() = statement_timestamp()"
        assert await db.fetch_value(same) is True
        async with db.transaction() as tx:
            await tx.execute("SELECT pg_sleep(0.01)")
            assert await tx.fetch_value(same) is False  # inside BEGIN ... COMMIT
        await db.close()

    @pytest.mark.parametrize(("threshold", "prepared"), [(5, True), (-1, False)])
    async def test_repeated_statements_are_prepared(
        self, postgres_url: str, threshold: int, prepared: bool
    ):
        """After DB_PREPARE_THRESHOLD uses a statement is prepared; negative never prepares."""
        config = InMemoryConfig({"DATABASE_URL": postgres_url, "DB_PREPARE_THRESHOLD": threshold})
        db = PostgresDatabase.from_config(config, logger=RecordingLogger())
        await db.connect()
        async with db.transaction() as tx:  # one connection for the whole check
            for i in range(8):
                await tx.fetch_value("SELECT %s::int + 1", (i,))
            count = await tx.fetch_value("SELECT count(*) FROM pg_prepared_statements")
        assert (count > 0) is prepared
        await db.close()

    async def test_rows_are_dicts(self, postgres_url: str):
        """fetch_one and fetch_all return plain dicts."""
        db = make_db(postgres_url)
        await db.connect()
        row = await db.fetch_one("SELECT 1 AS a, 'x' AS b")
        assert type(row) is dict
        assert row == {"a": 1, "b": "x"}
        assert all(type(r) is dict for r in await db.fetch_all("SELECT 1 AS a"))
        await db.close()


class TestSlowQueries:
    """Slow statements are logged at warning with SQL and duration, never parameters."""

    async def test_slow_query_is_logged_without_parameters(self, postgres_url: str):
        """A pg_sleep past DB_SLOW_QUERY_MS is logged; fast ones are not; values never are."""
        logger = RecordingLogger()
        db = make_db(postgres_url, logger, slow_query_ms=50)
        await db.connect()
        secret = f"param-{uuid.uuid4().hex}"
        await db.fetch_value("SELECT %s::text", (secret,))
        logger.assert_not_logged("slow query")
        sql = "SELECT pg_sleep(0.1), %s::text"
        await db.fetch_one(sql, (secret,))
        record = logger.assert_logged("slow query", level="warning", sql=sql)
        assert record.tags["duration_ms"] >= 100
        assert record.tags["threshold_ms"] == 50
        assert all(secret not in str(r.to_dict()) for r in logger.records)
        await db.close()

    async def test_failed_slow_statement_is_logged_too(self, postgres_url: str):
        """A statement that runs long and then fails is still reported as slow."""
        logger = RecordingLogger()
        db = make_db(postgres_url, logger, slow_query_ms=50, statement_timeout_ms=120)
        await db.connect()
        with pytest.raises(ServiceUnavailable):
            await db.execute("SELECT pg_sleep(1)")
        logger.assert_logged("slow query", sql="SELECT pg_sleep(1)")
        await db.close()


class TestHealthAndClose:
    """health_check timeouts and close() with work in flight."""

    async def test_health_check_times_out_when_no_connection_frees_up(self, postgres_url: str):
        """A health check that cannot get a connection in time raises ServiceUnavailable."""
        db = make_db(postgres_url, pool_max_size=1, health_timeout=0.2, pool_timeout=5.0)
        await db.connect()
        hold, held = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with db.transaction():
                held.set()
                await hold.wait()

        task = asyncio.create_task(holder())
        await held.wait()
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            await db.health_check()
        assert time.monotonic() - began < 1.5
        assert caught.value.details["reason"] == "health_timeout"
        hold.set()
        await task
        await db.health_check()
        await db.close()

    async def test_close_cancels_a_running_query_after_its_timeout(self, postgres_url: str):
        """A query still running when close() times out is cancelled on the server."""
        logger = RecordingLogger()
        app = f"close_{uuid.uuid4().hex[:8]}"
        db = make_db(postgres_url, logger, application_name=app)
        monitor = make_db(postgres_url)
        await asyncio.gather(db.connect(), monitor.connect())
        query = asyncio.create_task(db.fetch_value("SELECT pg_sleep(30)"))

        async def running() -> bool:
            sql = (
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND state = 'active'"
            )
            return bool(await monitor.fetch_value(sql, (app,)) == 1)

        await wait_until_async(running, timeout=5, what="the query runs on the server")
        await monitor.close()
        began = time.monotonic()
        await db.close(timeout=0.2)
        with pytest.raises(ServiceUnavailable) as caught:
            await query
        assert time.monotonic() - began < 5
        assert caught.value.details["reason"] == "canceled"
        logger.assert_logged("database closing with work still in flight after the timeout")

    async def test_concurrent_close_calls_both_return(self, postgres_url: str):
        """Two close() calls at once: both return once the database is closed."""
        db = make_db(postgres_url)
        await db.connect()
        await asyncio.gather(db.close(), db.close())
        assert db.pool_stats()["in_flight"] == 0
        with pytest.raises(ServiceUnavailable):
            await db.fetch_value("SELECT 1")

    async def test_pool_stats_before_connect(self):
        """pool_stats() before connect() reports nothing in flight."""
        db = make_db("postgresql://localhost/x")
        assert db.pool_stats() == {"in_flight": 0, "checks_failed": 0}


class TestErrors:
    """Driver errors that only a real server produces."""

    async def test_deferred_constraint_fails_at_commit_as_conflict(self, postgres_url: str):
        """A deferred foreign key violated at COMMIT raises Conflict; nothing is committed."""
        db = make_db(postgres_url)
        await db.connect()
        t = f"hx_{uuid.uuid4().hex[:10]}"
        await db.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY)")
        await db.execute(
            f"CREATE TABLE {t}_c (id INT PRIMARY KEY, p INT REFERENCES {t}(id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        try:
            with pytest.raises(Conflict) as caught:
                async with db.transaction() as tx:
                    await tx.execute(f"INSERT INTO {t}_c VALUES (1, 99)")
            assert caught.value.details["sqlstate"] == "23503"
            assert await db.fetch_value(f"SELECT count(*) FROM {t}_c") == 0
        finally:
            await db.execute(f"DROP TABLE {t}_c, {t}")
            await db.close()

    async def test_invalid_url_is_a_configuration_error_without_the_password(self):
        """A malformed DATABASE_URL is rejected at construction, password not shown."""
        with pytest.raises(ConfigurationError) as caught:
            make_db(f"postgresql://u:{_PASSWORD}@[::1")
        assert _PASSWORD not in str(caught.value)


class TestConnectionLoss:
    """A connection that dies under a transaction, and a pool that cannot fill."""

    async def test_terminated_backend_mid_transaction(self, postgres_url: str):
        """Statements and savepoints on a killed connection raise ServiceUnavailable;
        the pool replaces the connection and nothing leaks."""
        db = make_db(postgres_url, pool_min_size=1, pool_max_size=1)
        killer = make_db(postgres_url)
        await asyncio.gather(db.connect(), killer.connect())
        with pytest.raises(ServiceUnavailable):  # noqa: PT012 - the block is the subject
            async with db.transaction() as tx:
                assert repr(tx) == "<PostgresDatabase transaction open>"
                pid = await tx.fetch_value("SELECT pg_backend_pid()")
                assert await killer.fetch_value("SELECT pg_terminate_backend(%s)", (pid,))
                with pytest.raises(ServiceUnavailable):
                    async with tx.transaction():
                        pass
                await tx.execute("SELECT 1")
        assert repr(tx) == "<PostgresDatabase transaction finished>"
        assert await db.fetch_value("SELECT pg_backend_pid()") != pid
        stats = db.pool_stats()
        assert (stats["in_flight"], stats["pool_size"]) == (0, 1)
        await asyncio.gather(db.close(), killer.close())

    async def test_pool_that_cannot_fill_is_unavailable(self, postgres_url: str):
        """A server that takes the probe but refuses the pool's connections: ServiceUnavailable."""
        admin = make_db(postgres_url)
        await admin.connect()
        role = f"hx_limited_{uuid.uuid4().hex[:8]}"
        await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
        try:
            url = postgres_url.replace("postgres@", f"{role}@", 1)
            db = make_db(
                url, pool_min_size=3, pool_max_size=3, connect_timeout=0.5, pool_timeout=0.5
            )
            began = time.monotonic()
            with pytest.raises(ServiceUnavailable, match="pool could not open"):
                await db.connect()
            assert time.monotonic() - began < 3
        finally:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            await admin.execute(f"DROP ROLE {role}")
            await admin.close()
