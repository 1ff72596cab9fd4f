"""FlakyDatabase: injected failures and latency around any Database, with a call record."""

from __future__ import annotations

import asyncio

import pytest

from adapters.memory import SqliteDatabase
from domain_errors import Conflict, InternalServerError, ServiceUnavailable
from ports.database import Database
from testing.fakes import DatabaseCall, FakeClock, FlakyDatabase
from tests.helpers import wait_until


@pytest.fixture
async def flaky() -> FlakyDatabase:
    db = FlakyDatabase(SqliteDatabase(), clock=FakeClock())
    await db.connect()
    await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    db.calls.clear()
    return db


class TestFailures:
    """fail_next: the next N matching calls raise instead of reaching the database."""

    async def test_next_calls_fail_with_service_unavailable_by_default(self, flaky: FlakyDatabase):
        """Two injected failures, then calls go through again."""
        flaky.fail_next(2)
        for _ in range(2):
            with pytest.raises(ServiceUnavailable, match="injected failure in execute"):
                await flaky.execute("INSERT INTO t VALUES (1)")
        assert await flaky.execute("INSERT INTO t VALUES (1)") == 1
        assert flaky.pending_failures == 0
        assert [c.injected is not None for c in flaky.calls] == [True, True, False]

    async def test_chosen_error_class_instance_or_factory(self, flaky: FlakyDatabase):
        """error= takes a class, an instance (copied) or a callable of the method name."""
        original = Conflict("taken")
        flaky.fail_next(error=InternalServerError)
        flaky.fail_next(2, error=original)
        flaky.fail_next(error=lambda method: TimeoutError(f"slow {method}"))
        with pytest.raises(InternalServerError):
            await flaky.fetch_value("SELECT 1")
        raised = []
        for _ in range(2):
            with pytest.raises(Conflict) as caught:
                await flaky.fetch_one("SELECT 1")
            raised.append(caught.value)
        assert raised[0] is not original
        assert raised[0] is not raised[1]
        with pytest.raises(TimeoutError, match="fetch_all"):
            await flaky.fetch_all("SELECT 1")

    async def test_failures_restricted_to_methods(self, flaky: FlakyDatabase):
        """methods= leaves other calls alone until a matching one comes."""
        flaky.fail_next(methods=["health_check"])
        assert await flaky.fetch_value("SELECT 1") == 1
        with pytest.raises(ServiceUnavailable):
            await flaky.health_check()
        await flaky.health_check()

    async def test_failure_inside_a_transaction_rolls_it_back(self, flaky: FlakyDatabase):
        """A statement failed inside a transaction rolls the whole transaction back."""
        with pytest.raises(ServiceUnavailable):  # noqa: PT012 - the block is the subject
            async with flaky.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")
                flaky.fail_next()
                await tx.execute("INSERT INTO t VALUES (2)")
        assert await flaky.fetch_value("SELECT count(*) FROM t") == 0
        statements = [c for c in flaky.calls if c.in_transaction]
        assert [c.sql for c in statements] == [
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t VALUES (2)",
        ]

    async def test_reset_drops_pending_failures_and_latency(self, flaky: FlakyDatabase):
        """reset() forgets queued failures, latency and the call record."""
        flaky.fail_next(3)
        flaky.set_latency(5.0)
        assert flaky.pending_failures == 3
        flaky.reset()
        assert flaky.pending_failures == 0
        assert await flaky.fetch_value("SELECT 1") == 1  # neither failed nor delayed
        assert len(flaky.calls) == 1

    async def test_transactions_and_savepoints_can_fail(self, flaky: FlakyDatabase):
        """Entering a transaction or a savepoint counts as a 'transaction' call."""
        flaky.fail_next(methods=["transaction"])
        with pytest.raises(ServiceUnavailable):
            async with flaky.transaction():
                pass
        async with flaky.transaction() as tx:
            flaky.fail_next(methods=["transaction"])
            with pytest.raises(ServiceUnavailable):
                async with tx.transaction():
                    pass
            async with tx.transaction() as sp:
                await sp.execute("INSERT INTO t VALUES (3)")
                assert await sp.fetch_one("SELECT id FROM t") == {"id": 3}
                assert await sp.fetch_all("SELECT id FROM t") == [{"id": 3}]
                assert await sp.fetch_value("SELECT id FROM t") == 3
        assert [c.in_transaction for c in flaky.calls_to("transaction")] == [
            False,
            False,
            True,
            True,
        ]

    async def test_connect_can_fail(self):
        """connect() is a call like the others."""
        flaky = FlakyDatabase(SqliteDatabase())
        flaky.fail_next(methods=["connect"])
        with pytest.raises(ServiceUnavailable):
            await flaky.connect()
        await flaky.connect()
        assert await flaky.fetch_value("SELECT 1") == 1

    def test_bad_arguments(self):
        """Negative counts, negative latency and unknown method names are rejected."""
        flaky = FlakyDatabase(SqliteDatabase())
        with pytest.raises(ValueError, match="count"):
            flaky.fail_next(-1)
        with pytest.raises(ValueError, match="latency"):
            flaky.set_latency(-1)
        with pytest.raises(ValueError, match="unknown method"):
            flaky.fail_next(methods=["close"])


class TestLatency:
    """set_latency: calls first sleep on the injected clock."""

    async def test_latency_waits_for_the_clock(self, flaky: FlakyDatabase):
        """A delayed call completes only once the fake clock has moved far enough."""
        clock = flaky.clock
        assert isinstance(clock, FakeClock)
        flaky.set_latency(2.0, methods=["fetch_value"])
        call = asyncio.create_task(flaky.fetch_value("SELECT 1"))
        await wait_until(lambda: clock.sleepers == 1)
        clock.advance(1.0)
        await asyncio.sleep(0)
        assert not call.done()
        clock.advance(1.0)
        assert await call == 1
        assert await flaky.execute("INSERT INTO t VALUES (1)") == 1  # not delayed
        flaky.set_latency(0)
        assert await flaky.fetch_value("SELECT 2") == 2


class TestRecording:
    """Calls are recorded in order, and the wrapper passes for the port."""

    async def test_calls_and_passthrough(self, flaky: FlakyDatabase):
        """Each call is recorded with its SQL and params; other attributes pass through."""
        await flaky.execute("INSERT INTO t VALUES (%s)", (5,))
        assert await flaky.fetch_one("SELECT id FROM t") == {"id": 5}
        assert await flaky.fetch_all("SELECT id FROM t") == [{"id": 5}]
        await flaky.close()
        assert flaky.calls == [
            DatabaseCall("execute", "INSERT INTO t VALUES (%s)", (5,)),
            DatabaseCall("fetch_one", "SELECT id FROM t", ()),
            DatabaseCall("fetch_all", "SELECT id FROM t", ()),
            DatabaseCall("close"),
        ]
        assert isinstance(flaky, Database)
        assert flaky.lock_timeout == 10.0  # read from the wrapped SqliteDatabase
        assert "FlakyDatabase(SqliteDatabase" in repr(flaky)
