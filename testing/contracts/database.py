"""Contract suite for :class:`ports.database.Database`: every adapter must pass it.

Use it by subclassing :class:`DatabaseContract` in a test module and providing a
``database_adapter`` fixture that returns a :class:`DatabaseAdapter`::

    @pytest.fixture
    def database_adapter() -> DatabaseAdapter:
        return DatabaseAdapter("sqlite", SqliteDatabase, transactions_run_concurrently=False)

    class TestSqliteContract(DatabaseContract):
        pass

``make`` must return a new, *unconnected* database each call (constructors do no
I/O); the suite connects and closes it itself, on its own event loop, so the tests
are plain synchronous pytest tests and need no asyncio plugin. Each test works in
tables with unique names (``hx_<random>``) that it drops afterwards, so the suite
can share a real server with other tests. Only the SQL subset that PostgreSQL and
SQLite both speak is used (see ``adapters.memory._sqlite`` and ADR 0011).

Capability flags on :class:`DatabaseAdapter` skip, with the reason, the tests an
adapter cannot run; they never weaken an assertion.
"""

# Transaction blocks under test are multi-statement by nature:
# ruff: noqa: PT012

from __future__ import annotations

import asyncio
import contextlib
import decimal
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from domain_errors import (
    BadRequest,
    Conflict,
    DomainError,
    InternalServerError,
    ServiceUnavailable,
)
from ports.database import Database, Queryable
from testing._strategies_db import (
    SubsetColumn,
    sql_bigints,
    sql_identifiers,
    sql_integers,
    sql_rows,
    sql_scalars,
    sql_text,
    subset_columns,
    subset_values,
)

__all__ = ["DatabaseAdapter", "DatabaseContract", "TABLE_DDL", "unique_table_name"]

T = TypeVar("T")

TABLE_DDL = (
    "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
    "qty INTEGER NOT NULL DEFAULT 0, note TEXT)"
)
"""The table every contract test starts with (``{table}`` is its unique name)."""

CHILD_DDL = (
    "CREATE TABLE {table}_c (id BIGINT PRIMARY KEY, "
    "parent_id BIGINT NOT NULL REFERENCES {table}(id))"
)


def unique_table_name(prefix: str = "hx") -> str:
    """A table name no other test on a shared server uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@attrs.frozen
class DatabaseAdapter:
    """How the suite builds the adapter under test.

    ``make`` returns a new unconnected :class:`~ports.database.Database`.
    ``transactions_run_concurrently``: whether another task's statements run while a
    transaction is open (PostgreSQL) or wait for it to end (the SQLite fake).
    """

    name: str
    make: Callable[[], Database]
    transactions_run_concurrently: bool = True


class _Rollback(Exception):
    """Raised inside a transaction block to roll it back."""


class _Session:
    """A connected database and a fresh table on a private event loop."""

    def __init__(self, adapter: DatabaseAdapter) -> None:
        self.adapter = adapter
        self.runner = asyncio.Runner()
        self.db: Database = adapter.make()
        self.table = unique_table_name()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def __enter__(self) -> _Session:
        self.runner.__enter__()
        try:
            self.run(self.db.connect())
            self.run(self.db.execute(TABLE_DDL.format(table=self.table)))
        except BaseException:
            self.runner.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._cleanup())
        finally:
            self.runner.close()

    async def _cleanup(self) -> None:
        db = self.db
        try:
            await _drop(db, self.table)
        except ServiceUnavailable:
            # The test closed its database: drop through a fresh one.
            db = self.adapter.make()
            await db.connect()
            await _drop(db, self.table)
        await db.close()
        await self.db.close()


async def _drop(db: Database, table: str) -> None:
    await db.execute(f"DROP TABLE IF EXISTS {table}_c")
    await db.execute(f"DROP TABLE IF EXISTS {table}")


async def _wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.001)


async def _names(db: Queryable, table: str) -> list[str]:
    return [row["name"] for row in await db.fetch_all(f"SELECT name FROM {table} ORDER BY id")]


async def _count(db: Queryable, table: str) -> int:
    return int(await db.fetch_value(f"SELECT count(*) FROM {table}"))


async def _read_during_transaction(db: Database, table: str, *, commit: bool) -> list[int]:
    """Counts another task reads while a transaction inserts two rows, then ends."""
    in_tx, release, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def writer() -> None:
        with contextlib.suppress(_Rollback):
            async with db.transaction() as tx:
                await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
                in_tx.set()
                await release.wait()
                await tx.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'b')")
                if not commit:
                    raise _Rollback
        done.set()

    started: list[bool] = []

    async def reader() -> None:
        while True:
            started.append(True)
            seen.append(await _count(db, table))
            if done.is_set():
                return
            await asyncio.sleep(0)

    write = asyncio.create_task(writer())
    await in_tx.wait()
    read = asyncio.create_task(reader())
    await _wait_until(lambda: bool(started))
    release.set()
    await asyncio.gather(write, read)
    return seen


Scenario = Callable[[Database, str], Coroutine[Any, Any, None]]

_SECRET = "s3cr3t-param-value"  # noqa: S105 - a marker value, not a credential


class DatabaseContract:
    """The behaviour every :class:`~ports.database.Database` adapter shares.

    Needs a ``database_adapter`` fixture returning a :class:`DatabaseAdapter`.
    """

    @staticmethod
    def run(adapter: DatabaseAdapter, scenario: Scenario) -> None:
        """Run ``scenario(db, table)`` on a connected database with a fresh table."""
        with _Session(adapter) as session:
            session.run(scenario(session.db, session.table))

    @contextlib.contextmanager
    def session(self, adapter: DatabaseAdapter) -> Iterator[_Session]:
        """A connected database and fresh table for tests that run many coroutines."""
        with _Session(adapter) as session:
            yield session

    # --- lifecycle and health --------------------------------------------------------

    def test_health_check_passes_when_connected(self, database_adapter: DatabaseAdapter) -> None:
        """health_check returns None on a connected database."""

        async def scenario(db: Database, table: str) -> None:
            await db.health_check()  # returns None, raises if unhealthy
            await db.health_check()

        self.run(database_adapter, scenario)

    def test_calls_before_connect_are_unavailable(self, database_adapter: DatabaseAdapter) -> None:
        """Before connect(), statements and health checks raise ServiceUnavailable."""

        async def scenario() -> None:
            db = database_adapter.make()
            with pytest.raises(ServiceUnavailable):
                await db.fetch_value("SELECT 1")
            with pytest.raises(ServiceUnavailable):
                await db.health_check()
            await db.close()

        asyncio.run(scenario())

    def test_connect_twice_is_harmless(self, database_adapter: DatabaseAdapter) -> None:
        """A second connect() on an open database changes nothing."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
            await db.connect()
            assert await _names(db, table) == ["a"]

        self.run(database_adapter, scenario)

    def test_after_close_calls_are_unavailable_and_close_is_idempotent(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """After close(), calls raise ServiceUnavailable; closing again is a no-op."""

        async def scenario(db: Database, table: str) -> None:
            await db.close()
            await db.close()
            with pytest.raises(ServiceUnavailable):
                await db.fetch_value("SELECT 1")
            with pytest.raises(ServiceUnavailable):
                await db.health_check()
            with pytest.raises(ServiceUnavailable):
                async with db.transaction():
                    pass

        self.run(database_adapter, scenario)

    def test_close_lets_an_open_transaction_finish(self, database_adapter: DatabaseAdapter) -> None:
        """close() refuses new work at once but waits for an open transaction to commit."""

        async def scenario(db: Database, table: str) -> None:
            in_tx, release = asyncio.Event(), asyncio.Event()

            async def work() -> None:
                async with db.transaction() as tx:
                    await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
                    in_tx.set()
                    await release.wait()
                    await tx.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'b')")

            worker = asyncio.create_task(work())
            await in_tx.wait()
            closer = asyncio.create_task(db.close(timeout=10))
            await asyncio.sleep(0)  # let close() take its first step (no timing involved)
            with pytest.raises(ServiceUnavailable):
                await db.fetch_value("SELECT 1")
            assert not closer.done()
            release.set()
            await worker  # committed without error while close() waited
            await asyncio.wait_for(closer, 10)

        self.run(database_adapter, scenario)

    def test_close_gives_up_on_a_stuck_transaction_after_its_timeout(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """close(timeout) returns soon after the timeout; the stuck work then fails."""

        async def scenario(db: Database, table: str) -> None:
            in_tx, release = asyncio.Event(), asyncio.Event()

            async def work() -> None:
                async with db.transaction() as tx:
                    await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
                    in_tx.set()
                    await release.wait()
                    await tx.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'b')")

            worker = asyncio.create_task(work())
            await in_tx.wait()
            began = time.monotonic()
            await db.close(timeout=0.2)
            assert time.monotonic() - began < 3.0
            release.set()
            with pytest.raises(ServiceUnavailable):
                await worker

        self.run(database_adapter, scenario)

    # --- result shapes ---------------------------------------------------------------

    def test_fetch_shapes(self, database_adapter: DatabaseAdapter) -> None:
        """fetch_one/fetch_all give mappings by column name; fetch_value the first column."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(
                f"INSERT INTO {table} (id, name, qty) VALUES (1, 'a', 10), (2, 'b', 20)"
            )
            one = await db.fetch_one(f"SELECT id, name AS label FROM {table} WHERE id = 1")
            assert one is not None
            assert dict(one) == {"id": 1, "label": "a"}
            rows = await db.fetch_all(f"SELECT id, qty FROM {table} ORDER BY id DESC")
            assert [dict(r) for r in rows] == [{"id": 2, "qty": 20}, {"id": 1, "qty": 10}]
            assert await db.fetch_value(f"SELECT qty, id FROM {table} WHERE id = 2") == 20
            assert await db.fetch_value(f"SELECT note FROM {table} WHERE id = 2") is None

        self.run(database_adapter, scenario)

    def test_empty_results(self, database_adapter: DatabaseAdapter) -> None:
        """No row: fetch_one and fetch_value give None, fetch_all an empty list."""

        async def scenario(db: Database, table: str) -> None:
            query = f"SELECT id FROM {table} WHERE id = %s"
            assert await db.fetch_one(query, (9,)) is None
            assert await db.fetch_all(query, (9,)) == []
            assert await db.fetch_value(query, (9,)) is None

        self.run(database_adapter, scenario)

    def test_execute_returns_rows_affected(self, database_adapter: DatabaseAdapter) -> None:
        """execute() returns how many rows an INSERT, UPDATE or DELETE touched."""

        async def scenario(db: Database, table: str) -> None:
            inserted = await db.execute(
                f"INSERT INTO {table} (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c')"
            )
            assert inserted == 3
            assert await db.execute(f"UPDATE {table} SET qty = 5 WHERE id >= %s", (2,)) == 2
            assert await db.execute(f"DELETE FROM {table} WHERE id = %s", (99,)) == 0
            assert await db.execute(f"DELETE FROM {table}") == 3

        self.run(database_adapter, scenario)

    def test_returning_clauses(self, database_adapter: DatabaseAdapter) -> None:
        """INSERT/UPDATE/DELETE ... RETURNING give their rows through fetch_*."""

        async def scenario(db: Database, table: str) -> None:
            row = await db.fetch_one(
                f"INSERT INTO {table} (id, name, qty) VALUES (%s, %s, %s) RETURNING id, qty",
                (1, "a", 7),
            )
            assert row is not None
            assert dict(row) == {"id": 1, "qty": 7}
            new_qty = await db.fetch_value(
                f"UPDATE {table} SET qty = qty + 1 WHERE id = 1 RETURNING qty"
            )
            assert new_qty == 8
            deleted = await db.fetch_all(f"DELETE FROM {table} RETURNING name")
            assert [r["name"] for r in deleted] == ["a"]

        self.run(database_adapter, scenario)

    def test_fetch_on_a_statement_without_rows_is_an_error(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """fetch_* on a statement that returns no result set raises InternalServerError."""

        async def scenario(db: Database, table: str) -> None:
            for fetch in (db.fetch_one, db.fetch_all, db.fetch_value):
                with pytest.raises(InternalServerError):
                    await fetch(f"UPDATE {table} SET qty = 1")

        self.run(database_adapter, scenario)

    # --- parameters ------------------------------------------------------------------

    def test_positional_and_named_parameters(self, database_adapter: DatabaseAdapter) -> None:
        """%s takes a sequence, %(name)s a mapping (a name may repeat, extra keys are ignored)."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(
                f"INSERT INTO {table} (id, name, qty) VALUES (%s, %s, %s)", [1, "pos", 3]
            )
            await db.execute(
                f"INSERT INTO {table} (id, name, qty) VALUES (%(id)s, %(name)s, %(id)s)",
                {"id": 2, "name": "named", "unused": "x"},
            )
            rows = await db.fetch_all(f"SELECT id, name, qty FROM {table} ORDER BY id")
            assert [tuple(r.values()) for r in rows] == [(1, "pos", 3), (2, "named", 2)]

        self.run(database_adapter, scenario)

    def test_double_percent_is_a_literal_percent(self, database_adapter: DatabaseAdapter) -> None:
        """%% is a literal %, with or without other parameters."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'ab%%c'), (2, 'x')")
            assert await db.fetch_value(f"SELECT name FROM {table} WHERE id = 1") == "ab%c"
            like = f"SELECT count(*) FROM {table} WHERE name LIKE 'ab%%' AND id = %s"
            assert await db.fetch_value(like, (1,)) == 1

        self.run(database_adapter, scenario)

    def test_values_travel_as_parameters_never_as_sql(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """A value that looks like SQL is stored as data, quotes and all."""

        async def scenario(db: Database, table: str) -> None:
            nasty = f"x'); DROP TABLE {table}; -- %s %(name)s"
            await db.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (1, nasty))
            assert await db.fetch_value(f"SELECT name FROM {table} WHERE id = %s", (1,)) == nasty

        self.run(database_adapter, scenario)

    def test_malformed_parameters_are_internal_errors(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """Wrong count, wrong shape, mixed styles or a bad placeholder: InternalServerError."""

        async def scenario(db: Database, table: str) -> None:
            bad: list[tuple[str, Any]] = [
                ("SELECT %s, %s", (1,)),
                ("SELECT 1", (1,)),
                ("SELECT %(a)s", {"b": 1}),
                ("SELECT %(a)s", (1,)),
                ("SELECT %s", {"a": 1}),
                ("SELECT %s", "not-a-sequence"),
                ("SELECT %s, %(a)s", (1,)),
                ("SELECT %d", (1,)),
                ("SELECT 'a%b'", ()),
            ]
            for sql, params in bad:
                with pytest.raises(InternalServerError):
                    await db.fetch_value(sql, params)

        self.run(database_adapter, scenario)

    def test_rows_round_trip(self, database_adapter: DatabaseAdapter) -> None:
        """Any rows of bigints, int32s, text and NULLs read back exactly as written."""
        row = sql_rows(
            {
                "id": sql_bigints(),
                "name": sql_text(max_size=30),
                "qty": sql_integers(),
                "note": st.none() | sql_text(max_size=30),
            }
        )
        with self.session(database_adapter) as s:
            table = s.table

            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(
                rows=st.lists(row, max_size=6, unique_by=(lambda r: r["id"], lambda r: r["name"]))
            )
            def check(rows: list[dict[str, Any]]) -> None:
                async def body() -> None:
                    await s.db.execute(f"DELETE FROM {table}")
                    for r in rows:
                        await s.db.execute(
                            f"INSERT INTO {table} (id, name, qty, note) "
                            "VALUES (%(id)s, %(name)s, %(qty)s, %(note)s)",
                            r,
                        )
                    got = await s.db.fetch_all(f"SELECT id, name, qty, note FROM {table}")
                    key = lambda r: r["id"]  # noqa: E731
                    assert sorted(map(dict, got), key=key) == sorted(rows, key=key)

                s.run(body())

            check()

    def test_scalar_parameters_come_back_unchanged(self, database_adapter: DatabaseAdapter) -> None:
        """SELECT %s AS <alias> returns any NULL, bigint, text or float as given."""
        with self.session(database_adapter) as s:

            @settings(
                max_examples=40,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(value=sql_scalars(), alias=sql_identifiers())
            def check(value: Any, alias: str) -> None:
                row = s.run(s.db.fetch_one(f"SELECT %s AS {alias}", (value,)))
                assert row is not None
                assert dict(row) == {alias: value}

            check()

    # --- error mapping ---------------------------------------------------------------

    def test_unique_violation_is_a_conflict(self, database_adapter: DatabaseAdapter) -> None:
        """A duplicate key raises Conflict, chains the driver error, and hides the value."""

        async def scenario(db: Database, table: str) -> None:
            insert = f"INSERT INTO {table} (id, name) VALUES (%s, %s)"
            await db.execute(insert, (1, _SECRET))
            with pytest.raises(Conflict) as caught:
                await db.execute(insert, (2, _SECRET))
            error = caught.value
            assert error.__cause__ is not None
            assert not isinstance(error.__cause__, DomainError)
            assert _SECRET not in str(error)
            assert _SECRET not in repr(error)
            assert _SECRET not in str(dict(error.details))
            with pytest.raises(Conflict):
                await db.execute(insert, (1, "other"))

        self.run(database_adapter, scenario)

    def test_foreign_key_violation_is_a_conflict(self, database_adapter: DatabaseAdapter) -> None:
        """A missing parent, or deleting a referenced one, raises Conflict."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(CHILD_DDL.format(table=table))
            with pytest.raises(Conflict) as caught:
                await db.execute(f"INSERT INTO {table}_c (id, parent_id) VALUES (1, %s)", (42,))
            assert caught.value.__cause__ is not None
            await db.execute(f"INSERT INTO {table} (id, name) VALUES (42, 'p')")
            await db.execute(f"INSERT INTO {table}_c (id, parent_id) VALUES (1, 42)")
            with pytest.raises(Conflict):
                await db.execute(f"DELETE FROM {table} WHERE id = 42")
            assert await _count(db, f"{table}_c") == 1

        self.run(database_adapter, scenario)

    def test_other_failures_are_internal_errors(self, database_adapter: DatabaseAdapter) -> None:
        """NOT NULL violations, syntax errors and unknown tables raise InternalServerError."""

        async def scenario(db: Database, table: str) -> None:
            cases = [
                (f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (1, None)),
                ("SELEC 1", ()),
                (f"SELECT * FROM {table}_missing WHERE name = %s", (_SECRET,)),
            ]
            for sql, params in cases:
                with pytest.raises(InternalServerError) as caught:
                    await db.execute(sql, params)
                assert caught.value.__cause__ is not None
                assert _SECRET not in str(caught.value)

        self.run(database_adapter, scenario)

    # --- transactions ----------------------------------------------------------------

    def test_transaction_commits_on_normal_exit(self, database_adapter: DatabaseAdapter) -> None:
        """Work done in a block that exits normally is committed and visible after."""

        async def scenario(db: Database, table: str) -> None:
            async with db.transaction() as tx:
                await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
                assert await _names(tx, table) == ["a"]  # reads its own writes
                row = await tx.fetch_one(f"SELECT id, name FROM {table}")
                assert row is not None
                assert dict(row) == {"id": 1, "name": "a"}
            assert await _names(db, table) == ["a"]

        self.run(database_adapter, scenario)

    def test_transaction_rolls_back_on_exception(self, database_adapter: DatabaseAdapter) -> None:
        """A block that raises is rolled back and the very same exception propagates."""

        async def scenario(db: Database, table: str) -> None:
            boom = ValueError("boom")
            with pytest.raises(ValueError, match="boom") as caught:
                async with db.transaction() as tx:
                    await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
                    raise boom
            assert caught.value is boom
            assert await _count(db, table) == 0

        self.run(database_adapter, scenario)

    def test_savepoint_rollback_keeps_outer_work(self, database_adapter: DatabaseAdapter) -> None:
        """A nested block that raises undoes only its own work; the outer commits."""

        async def scenario(db: Database, table: str) -> None:
            async with db.transaction() as tx:
                await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'outer')")
                with pytest.raises(_Rollback):
                    async with tx.transaction() as sp:
                        await sp.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'inner')")
                        raise _Rollback
                async with tx.transaction() as sp:
                    await sp.execute(f"INSERT INTO {table} (id, name) VALUES (3, 'kept')")
            assert await _names(db, table) == ["outer", "kept"]

        self.run(database_adapter, scenario)

    def test_savepoints_nest(self, database_adapter: DatabaseAdapter) -> None:
        """Three levels deep: rolling back the middle drops it and everything inside it."""

        async def scenario(db: Database, table: str) -> None:
            async with db.transaction() as tx:
                await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'l1')")
                with pytest.raises(_Rollback):
                    async with tx.transaction() as l2:
                        await l2.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'l2')")
                        async with l2.transaction() as l3:
                            await l3.execute(f"INSERT INTO {table} (id, name) VALUES (3, 'l3')")
                        assert await _count(l2, table) == 3
                        raise _Rollback
            assert await _names(db, table) == ["l1"]

        self.run(database_adapter, scenario)

    def test_outer_rollback_discards_released_savepoints(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """A savepoint that completed is still undone when the outer block fails."""

        async def scenario(db: Database, table: str) -> None:
            with pytest.raises(_Rollback):
                async with db.transaction() as tx:
                    async with tx.transaction() as sp:
                        await sp.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
                    raise _Rollback
            assert await _count(db, table) == 0

        self.run(database_adapter, scenario)

    def test_conflict_in_a_savepoint_can_be_handled(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """Catching a Conflict outside the savepoint that raised it lets the transaction go on."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'taken')")
            async with db.transaction() as tx:
                with pytest.raises(Conflict):
                    async with tx.transaction() as sp:
                        await sp.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'taken')")
                await tx.execute(f"INSERT INTO {table} (id, name) VALUES (3, 'free')")
            assert await _names(db, table) == ["taken", "free"]

        self.run(database_adapter, scenario)

    def test_a_failed_statement_aborts_the_transaction(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """After a statement fails, later ones fail, and a normal exit rolls back and raises."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'taken')")
            with pytest.raises(InternalServerError) as caught:
                async with db.transaction() as tx:
                    await tx.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'new')")
                    with pytest.raises(Conflict):
                        await tx.execute(f"INSERT INTO {table} (id, name) VALUES (3, 'taken')")
                    with pytest.raises(InternalServerError):
                        await tx.execute(f"INSERT INTO {table} (id, name) VALUES (4, 'more')")
            assert caught.value.details.get("reason") == "aborted_transaction"
            assert await _names(db, table) == ["taken"]

        self.run(database_adapter, scenario)

    def test_aborted_savepoint_exit_rolls_back_only_the_savepoint(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """A savepoint left normally after a failure raises; the outer block can go on."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'taken')")
            async with db.transaction() as tx:
                with pytest.raises(InternalServerError):
                    async with tx.transaction() as sp:
                        await sp.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'undone')")
                        with pytest.raises(Conflict):
                            await sp.execute(f"INSERT INTO {table} (id, name) VALUES (3, 'taken')")
                await tx.execute(f"INSERT INTO {table} (id, name) VALUES (4, 'kept')")
            assert await _names(db, table) == ["taken", "kept"]

        self.run(database_adapter, scenario)

    def test_transaction_object_is_dead_after_its_block(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """Using a transaction after its block ended raises InternalServerError."""

        async def scenario(db: Database, table: str) -> None:
            async with db.transaction() as tx:
                pass
            with pytest.raises(InternalServerError):
                await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'late')")
            assert await _count(db, table) == 0

        self.run(database_adapter, scenario)

    # --- concurrency -----------------------------------------------------------------

    def test_many_tasks_at_once(self, database_adapter: DatabaseAdapter) -> None:
        """200 concurrent autocommit inserts and 40 concurrent increments all land."""

        async def scenario(db: Database, table: str) -> None:
            insert = f"INSERT INTO {table} (id, name) VALUES (%s, %s)"
            await asyncio.gather(*(db.execute(insert, (i, f"n{i}")) for i in range(1, 201)))
            assert await _count(db, table) == 200

            async def increment() -> None:
                async with db.transaction() as tx:
                    await tx.execute(f"UPDATE {table} SET qty = qty + 1 WHERE id = 1")

            await asyncio.gather(*(increment() for _ in range(40)))
            assert await db.fetch_value(f"SELECT qty FROM {table} WHERE id = 1") == 40

        self.run(database_adapter, scenario)

    def test_other_tasks_never_see_a_transaction_half_done(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """Readers see a two-row transaction's rows all or none, and none if rolled back."""

        async def scenario(db: Database, table: str) -> None:
            for commit in (True, False):
                await db.execute(f"DELETE FROM {table}")
                seen = await _read_during_transaction(db, table, commit=commit)
                assert set(seen) <= ({0, 2} if commit else {0}), seen
                assert seen[-1] == (2 if commit else 0)

        self.run(database_adapter, scenario)

    def test_readers_are_not_blocked_by_an_open_transaction(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """While a transaction is open, another task reads the last committed state."""
        if not database_adapter.transactions_run_concurrently:
            pytest.skip(
                f"{database_adapter.name} serializes transactions: other tasks wait for the "
                "open one instead of reading around it (ADR 0011)"
            )

        async def scenario(db: Database, table: str) -> None:
            in_tx, release = asyncio.Event(), asyncio.Event()

            async def writer() -> None:
                async with db.transaction() as tx:
                    await tx.execute(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
                    in_tx.set()
                    await release.wait()

            write = asyncio.create_task(writer())
            await in_tx.wait()
            assert await asyncio.wait_for(_count(db, table), 5) == 0
            release.set()
            await write
            assert await _count(db, table) == 1

        self.run(database_adapter, scenario)

    # --- the documented SQL subset: types, rejections, constraint names -------------

    def test_subset_types_match_postgresql(self, database_adapter: DatabaseAdapter) -> None:
        """Random tables of INTEGER, BIGINT, NUMERIC(p,s), BOOLEAN, TEXT, TIMESTAMPTZ,
        JSONB and UUID columns and random valid rows: SELECT *, count/sum/min/max,
        comparisons with a parameter, boolean expressions and ORDER BY (NULLs too)
        return what PostgreSQL returns (``subset_model``), values and Python types."""
        with self.session(database_adapter) as s:

            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            )
            @given(data=st.data())
            def check(data: st.DataObject) -> None:
                columns = data.draw(subset_columns(), label="columns")
                rows = data.draw(
                    st.lists(
                        st.fixed_dictionaries({c.name: subset_values(c) for c in columns}),
                        max_size=6,
                    ),
                    label="rows",
                )
                pivots = {
                    c.name: data.draw(subset_values(c).filter(lambda v: v is not None))
                    for c in columns
                    if c.kind in _ORDERED
                }
                s.run(_check_subset(s.db, columns, rows, pivots))

            check()

    @pytest.mark.parametrize(
        ("column", "value", "sqlstate"),
        [
            ("INTEGER", "abc", "22P02"),
            ("INTEGER", 2**31, "22003"),
            ("BIGINT", "12x", "22P02"),
            ("NUMERIC(5,2)", "abc", "22P02"),
            ("NUMERIC(5,2)", Decimal("1000"), "22003"),
            ("NUMERIC(5,2)", Decimal("999.995"), "22003"),
            ("BOOLEAN", "maybe", "22P02"),
            ("UUID", "not-a-uuid", "22P02"),
            ("TIMESTAMPTZ", "garbage", "22007"),
            ("TIMESTAMPTZ", "2024-13-01", "22008"),
            ("JSONB", "{nope", "22P02"),
        ],
    )
    def test_values_the_column_type_rejects(
        self, database_adapter: DatabaseAdapter, column: str, value: Any, sqlstate: str
    ) -> None:
        """A value PostgreSQL's column type rejects is an InternalServerError with its
        SQLSTATE on every adapter, and names no value."""

        async def scenario(db: Database, table: str) -> None:
            await db.execute(f"CREATE TABLE {table}_c (id BIGINT PRIMARY KEY, v {column})")
            with pytest.raises(InternalServerError) as caught:
                await db.execute(f"INSERT INTO {table}_c (id, v) VALUES (1, %s)", (value,))
            assert caught.value.details["sqlstate"] == sqlstate
            assert str(value) not in str(caught.value)
            assert await _count(db, f"{table}_c") == 0

        self.run(database_adapter, scenario)

    def test_constraints_are_named_as_postgresql_names_them(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """Violations report PostgreSQL's default constraint names (``<table>_pkey``,
        ``_<col>_key``, ``_<col>_fkey``, ``_<col>_check``, ``_check`` for a table CHECK
        over several columns) or the explicit ``CONSTRAINT`` name, with the table, in
        ``details`` (for operators; never in a public body)."""

        async def scenario(db: Database, table: str) -> None:
            p, k = f"{table}_c", f"{table}_k"
            await db.execute(
                f"CREATE TABLE {p} (id INTEGER PRIMARY KEY, code TEXT UNIQUE, "
                "qty INTEGER NOT NULL CHECK (qty > 0), lo INTEGER, hi INTEGER, "
                "CONSTRAINT ordered_range CHECK (lo < hi))"
            )
            await db.execute(
                f"CREATE TABLE {k} (id INTEGER PRIMARY KEY, p INTEGER REFERENCES {p}(id), "
                "a INTEGER, b INTEGER, UNIQUE (a, b), CHECK (a > b))"
            )
            try:
                await db.execute(f"INSERT INTO {p} VALUES (1, 'x', 1, 1, 2)")
                await db.execute(f"INSERT INTO {k} VALUES (1, 1, 2, 1)")
                ise, fk = InternalServerError, {"constraint": f"{k}_p_fkey", "table": k}
                cases: list[tuple[str, type[DomainError], dict[str, str]]] = [
                    (
                        f"INSERT INTO {p} VALUES (1, 'y', 1, 1, 2)",
                        Conflict,
                        {"constraint": f"{p}_pkey"},
                    ),
                    (
                        f"INSERT INTO {p} VALUES (2, 'x', 1, 1, 2)",
                        Conflict,
                        {"constraint": f"{p}_code_key"},
                    ),
                    (
                        f"INSERT INTO {p} VALUES (2, 'y', 0, 1, 2)",
                        ise,
                        {"constraint": f"{p}_qty_check"},
                    ),
                    (
                        f"INSERT INTO {p} VALUES (2, 'y', 1, 2, 1)",
                        ise,
                        {"constraint": "ordered_range"},
                    ),
                    (
                        f"INSERT INTO {p} VALUES (2, 'y', NULL, 1, 2)",
                        ise,
                        {"column": "qty", "table": p},
                    ),
                    (f"INSERT INTO {k} VALUES (2, 9, 3, 1)", Conflict, fk),
                    (f"DELETE FROM {p} WHERE id = 1", Conflict, fk),
                    (
                        f"INSERT INTO {k} VALUES (2, 1, 2, 1)",
                        Conflict,
                        {"constraint": f"{k}_a_b_key"},
                    ),
                    (f"INSERT INTO {k} VALUES (2, 1, 1, 2)", ise, {"constraint": f"{k}_check"}),
                ]
                for sql, error, expected in cases:
                    with pytest.raises(error) as caught:
                        await db.execute(sql)
                    details = dict(caught.value.details)
                    assert {key: details.get(key) for key in expected} == expected, sql
                    if error is Conflict:
                        assert details["sqlstate"] in ("23505", "23503")
                        assert caught.value.public_details is False
            finally:
                await db.execute(f"DROP TABLE IF EXISTS {k}")
                await db.execute(f"DROP TABLE IF EXISTS {p}")

        self.run(database_adapter, scenario)

    def test_invalid_text_parameters_are_bad_requests(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """A lone surrogate or a NUL in a text parameter is a BadRequest naming the
        parameter's position (or name), never its value; a transaction carries on."""

        async def scenario(db: Database, table: str) -> None:
            insert = f"INSERT INTO {table} (id, name) VALUES (%s, %s)"
            for bad in ("x\ud800y", "a\x00" + _SECRET):
                with pytest.raises(BadRequest) as caught:
                    await db.execute(insert, (1, bad))
                assert caught.value.details["parameter"] == 2
                assert _SECRET not in str(caught.value)
                assert "\ud800" not in str(caught.value)
            with pytest.raises(BadRequest) as named:
                await db.fetch_value("SELECT %(v)s", {"v": "\udfff"})
            assert named.value.details["parameter"] == "v"
            async with db.transaction() as tx:
                with pytest.raises(BadRequest):
                    await tx.execute(insert, (1, "\ud800"))
                await tx.execute(insert, (1, "fine"))
            assert await _names(db, table) == ["fine"]

        self.run(database_adapter, scenario)

    # --- stateful model check --------------------------------------------------------

    def test_random_operation_sequences_match_a_model(
        self, database_adapter: DatabaseAdapter
    ) -> None:
        """Random inserts, updates, deletes and committed or rolled-back transactions
        leave the table equal to a dict model after every step."""
        with self.session(database_adapter) as s:
            machine = _model_machine(s)
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=12,
                    stateful_step_count=8,
                    deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture],
                ),
            )


# --- the model for the stateful test -------------------------------------------------

Model = dict[int, tuple[str, int]]
Op = tuple[Any, ...]

_ids = st.integers(0, 6)
_op_names = st.sampled_from(["a", "b", "c", "d", "e"])
_qtys = st.integers(-1000, 1000)
_ops = st.one_of(
    st.tuples(st.just("insert"), _ids, _op_names, _qtys),
    st.tuples(st.just("set_qty"), _ids, _qtys),
    st.tuples(st.just("rename"), _ids, _op_names),
    st.tuples(st.just("delete"), _ids),
)


def _apply(model: Model, op: Op) -> tuple[bool, int, Model]:
    """(conflicts?, rows affected, model after) for ``op`` on ``model``."""
    kind, key = op[0], op[1]
    after = dict(model)
    if kind == "insert":
        name, qty = op[2], op[3]
        if key in model or any(n == name for n, _ in model.values()):
            return True, 0, model
        after[key] = (name, qty)
        return False, 1, after
    if key not in model:
        return False, 0, model
    if kind == "set_qty":
        after[key] = (model[key][0], op[2])
    elif kind == "rename":
        if any(n == op[2] and k != key for k, (n, _) in model.items()):
            return True, 0, model
        after[key] = (op[2], model[key][1])
    else:
        del after[key]
    return False, 1, after


async def _perform(db: Queryable, table: str, op: Op) -> int:
    kind = op[0]
    if kind == "insert":
        return await db.execute(
            f"INSERT INTO {table} (id, name, qty) VALUES (%s, %s, %s)", (op[1], op[2], op[3])
        )
    if kind == "set_qty":
        return await db.execute(f"UPDATE {table} SET qty = %s WHERE id = %s", (op[2], op[1]))
    if kind == "rename":
        return await db.execute(
            f"UPDATE {table} SET name = %(name)s WHERE id = %(id)s", {"name": op[2], "id": op[1]}
        )
    return await db.execute(f"DELETE FROM {table} WHERE id = %s", (op[1],))


async def _savepoint(tx: Any, table: str, model: Model, ops: list[Op], keep: bool) -> Model:
    """Run ``ops`` in one savepoint of ``tx``; the model after it (unchanged if undone)."""
    expected = model
    conflict_at: Op | None = None
    for op in ops:
        conflict, _, after = _apply(expected, op)
        if conflict:
            conflict_at = op
            break
        expected = after
    try:
        async with tx.transaction() as sp:
            working = model
            for op in ops:
                conflict, count, after = _apply(working, op)
                got = await _perform(sp, table, op)  # raises Conflict when it should
                assert not conflict, f"expected a Conflict for {op}"
                assert got == count, f"{op} affected {got} rows, expected {count}"
                working = after
            if not keep:
                raise _Rollback  # noqa: TRY301
    except Conflict:
        assert conflict_at is not None, "unexpected Conflict"
        return model
    except _Rollback:
        return model
    assert conflict_at is None
    return expected


def _model_machine(s: _Session) -> type[RuleBasedStateMachine]:
    db = s.db

    class DatabaseModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.table = unique_table_name()
            s.run(db.execute(TABLE_DDL.format(table=self.table)))
            self.model: Model = {}

        def teardown(self) -> None:
            s.run(_drop(db, self.table))

        @rule(op=_ops)
        def autocommit(self, op: Op) -> None:
            conflict, count, after = _apply(self.model, op)
            try:
                got = s.run(_perform(db, self.table, op))
            except Conflict:
                assert conflict, f"unexpected Conflict for {op}"
                return
            assert not conflict, f"expected a Conflict for {op}"
            assert got == count
            self.model = after

        @rule(
            savepoints=st.lists(
                st.tuples(st.lists(_ops, min_size=1, max_size=3), st.booleans()), max_size=3
            ),
            commit=st.booleans(),
        )
        def transaction(self, savepoints: list[tuple[list[Op], bool]], commit: bool) -> None:
            """A transaction of savepoints, each a few ops that all land or none do: a
            savepoint is undone by a Conflict in it or by choice (``keep`` false)."""

            async def body() -> Model | None:
                working = self.model
                try:
                    async with db.transaction() as tx:
                        for ops, keep in savepoints:
                            working = await _savepoint(tx, self.table, working, ops, keep)
                        if not commit:
                            raise _Rollback  # noqa: TRY301
                except _Rollback:
                    return None
                return working

            result = s.run(body())
            if result is not None:
                self.model = result

        @invariant()
        def table_equals_model(self) -> None:
            rows = s.run(db.fetch_all(f"SELECT id, name, qty FROM {self.table} ORDER BY id"))
            assert [(r["id"], r["name"], r["qty"]) for r in rows] == [
                (k, *v) for k, v in sorted(self.model.items())
            ]

    return DatabaseModel


# --- the model for the SQL subset: what PostgreSQL stores and psycopg returns ---------

_ORDERED = frozenset({"int4", "int8", "numeric", "text", "timestamptz"})
_EXACT = decimal.Context(prec=200)


def _pg_json(value: Any) -> Any:
    """JSON as jsonb keeps it: a number is a NUMERIC, so ``1e+16`` comes back as an int."""
    if isinstance(value, float):
        exact = Decimal(repr(value))
        return int(exact) if int(exact.as_tuple().exponent) >= 0 else value
    if isinstance(value, list):
        return [_pg_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _pg_json(v) for k, v in value.items()}
    return value


def subset_model(column: SubsetColumn, value: Any) -> Any:
    """What PostgreSQL returns for ``value`` stored in ``column``: NUMERIC rounded half
    away from zero to the scale, TIMESTAMPTZ in UTC, JSONB parsed."""
    if value is None:
        return None
    if column.kind == "numeric":
        step = Decimal(1).scaleb(-column.scale)
        rounded = value.quantize(step, rounding=decimal.ROUND_HALF_UP, context=_EXACT)
        return rounded if rounded != 0 else abs(rounded)
    if column.kind == "timestamptz":
        return value.astimezone(UTC)
    if column.kind == "jsonb":
        return _pg_json(json.loads(value))
    return value


def shape(value: Any) -> Any:
    """``value`` with its Python types made comparable: ``1 != True != 1.0``, Decimal by
    its text (scale included), datetimes by instant and UTC offset."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shape(v) for v in value]
    if isinstance(value, Decimal):
        return ("Decimal", str(value))
    if isinstance(value, datetime):
        return ("datetime", value.astimezone(UTC), value.utcoffset())
    return (type(value).__name__, value)


def _aggregates(column: SubsetColumn, present: Sequence[Any]) -> tuple[list[str], dict[str, Any]]:
    name = column.name
    selects = [f"count({name}) AS n"]
    expected: dict[str, Any] = {"n": len(present)}
    if column.kind in ("int4", "int8", "numeric"):
        selects.append(f"sum({name}) AS total")
        total: Any = None
        if present:
            total = sum(present) if column.kind != "numeric" else present[0]
            if column.kind == "int8":
                total = Decimal(total)
            for value in present[1:] if column.kind == "numeric" else ():
                total = _EXACT.add(total, value)
        expected["total"] = total
    if column.kind in _ORDERED:
        selects += [f"min({name}) AS lo", f"max({name}) AS hi"]
        expected |= {"lo": min(present, default=None), "hi": max(present, default=None)}
    return selects, expected


async def _check_subset(
    db: Database, columns: list[SubsetColumn], rows: list[dict[str, Any]], pivots: dict[str, Any]
) -> None:
    table = unique_table_name()
    names = ", ".join(c.name for c in columns)
    await db.execute(
        f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, "
        + ", ".join(f"{c.name} {c.sql_type}" for c in columns)
        + ")"
    )
    try:
        marks = ", ".join(["%s"] * len(columns))
        for i, row in enumerate(rows):
            await db.execute(
                f"INSERT INTO {table} (id, {names}) VALUES (%s, {marks})",
                (i, *(row[c.name] for c in columns)),
            )
        model = [
            {"id": i, **{c.name: subset_model(c, row[c.name]) for c in columns}}
            for i, row in enumerate(rows)
        ]
        got = await db.fetch_all(f"SELECT * FROM {table} ORDER BY id")
        assert shape([dict(r) for r in got]) == shape(model)
        total = await db.fetch_one(
            f"SELECT count(*) AS rows, EXISTS(SELECT 1 FROM {table} WHERE id > 0) AS many "
            f"FROM {table}"
        )
        assert shape(dict(total or {})) == shape({"rows": len(rows), "many": len(rows) > 1})
        for column in columns:
            name = column.name
            # SQL NULL only: JSON null is a value (count counts it).
            stored = [m for m, row in zip(model, rows, strict=True) if row[name] is not None]
            present = [m[name] for m in stored]
            selects, expected = _aggregates(column, present)
            got_row = await db.fetch_one(f"SELECT {', '.join(selects)} FROM {table}")
            assert shape(dict(got_row or {})) == shape(expected), name
            if column.kind not in _ORDERED:
                continue
            pivot = pivots[name]
            low = subset_model(column, pivot) if column.kind == "timestamptz" else pivot
            ordered = sorted((m[name], m["id"]) for m in stored)
            nulls = [m["id"] for m, row in zip(model, rows, strict=True) if row[name] is None]
            found = await db.fetch_all(
                f"SELECT id, {name} > %s AS above, {name} IS NULL AS missing FROM {table} "
                f"WHERE {name} < %s OR {name} IS NULL ORDER BY {name}, id",
                (pivot, pivot),
            )
            want = [{"id": i, "above": False, "missing": False} for v, i in ordered if v < low] + [
                {"id": i, "above": None, "missing": True} for i in nulls
            ]
            assert shape([dict(r) for r in found]) == shape(want), name
            down = await db.fetch_all(f"SELECT id FROM {table} ORDER BY {name} DESC, id")
            by_value = sorted(ordered, key=lambda vi: vi[1])
            by_value.sort(key=lambda vi: vi[0], reverse=True)
            assert [r["id"] for r in down] == nulls + [i for _, i in by_value], name
    finally:
        await db.execute(f"DROP TABLE IF EXISTS {table}")
