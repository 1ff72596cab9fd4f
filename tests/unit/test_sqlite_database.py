"""SqliteDatabase specifics beyond the shared contract: placeholder translation, types,
error mapping, serialization of transactions, and lifecycle edges."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from adapters.memory import InMemoryConfig, SqliteDatabase
from adapters.memory._sqlite import _map_error, _translate
from domain_errors import Conflict, InternalServerError, ServiceUnavailable
from ports.database import Database
from testing.fakes import RecordingLogger


@pytest.fixture
async def db() -> SqliteDatabase:
    database = SqliteDatabase()
    await database.connect()
    await database.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT UNIQUE)")
    return database


class TestPlaceholders:
    """psycopg placeholders become SQLite's, with psycopg's rules."""

    @pytest.mark.parametrize(
        ("sql", "expected"),
        [
            ("SELECT 1", ("SELECT 1", 0, ())),
            ("SELECT %s, %b, %t", ("SELECT ?, ?, ?", 3, ())),
            ("SELECT %(a)s, %(b)s, %(a)s", ("SELECT ?, ?, ?", 0, ("a", "b", "a"))),
            ("SELECT '100%%', %s", ("SELECT '100%', ?", 1, ())),
            ("%%%s%%", ("%?%", 1, ())),
        ],
    )
    def test_translation(self, sql: str, expected: tuple[str, int, tuple[str, ...]]):
        """Each placeholder becomes ?, named ones keep their order, %% becomes %."""
        assert _translate(sql) == expected

    @pytest.mark.parametrize("sql", ["SELECT %d", "SELECT 50%", "SELECT %(a)x", "SELECT %s, %(a)s"])
    def test_invalid_placeholders(self, sql: str):
        """Unknown placeholders, a lone % and mixed styles are InternalServerError."""
        with pytest.raises(InternalServerError):
            _translate(sql)

    async def test_mapping_without_placeholders_is_accepted(self, db: SqliteDatabase):
        """A mapping for a query without placeholders is fine (as in psycopg)."""
        assert await db.fetch_value("SELECT 5", {"unused": 1}) == 5

    async def test_select_through_execute_counts_rows(self, db: SqliteDatabase):
        """execute() of a SELECT returns its row count, as PostgreSQL reports it."""
        await db.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        assert await db.execute("SELECT * FROM t") == 2
        assert await db.execute("CREATE TABLE u (x INTEGER)") == -1


class TestTypes:
    """Python values PostgreSQL returns typed come back typed from the fake too."""

    async def test_typed_columns_round_trip(self, db: SqliteDatabase):
        """BOOLEAN, TIMESTAMPTZ, NUMERIC(p,s), NUMERIC and UUID columns round-trip."""
        await db.execute(
            "CREATE TABLE typed (b BOOLEAN, ts TIMESTAMPTZ, n NUMERIC(10, 2), dec DECIMAL, u UUID)"
        )
        ts = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
        values = (True, ts, Decimal("1.25"), Decimal("-3"), uuid.UUID(int=7))
        await db.execute("INSERT INTO typed VALUES (%s, %s, %s, %s, %s)", values)
        row = await db.fetch_one("SELECT * FROM typed")
        assert row is not None
        assert tuple(row.values()) == values
        await db.execute("UPDATE typed SET b = FALSE")
        assert await db.fetch_value("SELECT b FROM typed") is False

    async def test_bytes_like_values_pass_through(self, db: SqliteDatabase):
        """bytes and bytearray parameters in a BYTEA column read back as bytes."""
        await db.execute("CREATE TABLE blobs (b BYTEA)")
        await db.execute("INSERT INTO blobs VALUES (%s), (%s)", (b"\x00\x01", bytearray(b"ab")))
        assert [r["b"] for r in await db.fetch_all("SELECT b FROM blobs")] == [b"\x00\x01", b"ab"]

    async def test_naive_stored_timestamps_read_back_as_utc(self, db: SqliteDatabase):
        """CURRENT_TIMESTAMP in a TIMESTAMPTZ column reads back timezone-aware (UTC)."""
        await db.execute("CREATE TABLE ev (at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP, x INTEGER)")
        await db.execute("INSERT INTO ev (x) VALUES (1)")
        at = await db.fetch_value("SELECT at FROM ev")
        assert at.tzinfo is UTC

    async def test_integer_overflow_is_an_internal_error(self, db: SqliteDatabase):
        """An integer beyond 64 bits raises InternalServerError (SQLSTATE 22003)."""
        with pytest.raises(InternalServerError) as caught:
            await db.execute("INSERT INTO t (id) VALUES (%s)", (2**70,))
        assert caught.value.details["sqlstate"] == "22003"


class TestErrorMapping:
    """sqlite3 errors become the domain errors PostgresDatabase raises."""

    async def test_not_null_and_check_carry_postgres_sqlstates(self, db: SqliteDatabase):
        """NOT NULL -> 23502, CHECK -> 23514, both InternalServerError."""
        await db.execute("CREATE TABLE c (x INTEGER NOT NULL CHECK (x > 0))")
        with pytest.raises(InternalServerError) as not_null:
            await db.execute("INSERT INTO c VALUES (NULL)")
        with pytest.raises(InternalServerError) as check:
            await db.execute("INSERT INTO c VALUES (-1)")
        assert not_null.value.details["sqlstate"] == "23502"
        assert check.value.details["sqlstate"] == "23514"

    async def test_conflicts_name_the_constraint(self, db: SqliteDatabase):
        """A unique violation is a DUPLICATE Conflict naming table and column."""
        await db.execute("INSERT INTO t VALUES (1, 'a')")
        with pytest.raises(Conflict) as caught:
            await db.execute("INSERT INTO t VALUES (2, 'a')")
        assert caught.value.code == "DUPLICATE"
        assert dict(caught.value.details) == {
            "constraint": "t_name_key",
            "table": "t",
            "sqlstate": "23505",
        }

    def test_foreign_key_conflict_without_detail(self):
        """A FOREIGN KEY failure (SQLite names no constraint) is still a Conflict."""
        exc = sqlite3.IntegrityError("FOREIGN KEY constraint failed")
        exc.sqlite_errorname = "SQLITE_CONSTRAINT_FOREIGNKEY"
        error = _map_error(exc)
        assert isinstance(error, Conflict)
        assert error.details["sqlstate"] == "23503"
        assert error.details["table"] == "?"

    async def test_commit_time_violation_rolls_back_and_conflicts(self, db: SqliteDatabase):
        """A deferred foreign key broken at COMMIT raises Conflict; nothing is kept."""
        await db.execute(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, p BIGINT REFERENCES t(id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        with pytest.raises(Conflict):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO child VALUES (1, 99)")
        assert await db.fetch_value("SELECT count(*) FROM child") == 0
        async with db.transaction() as tx:  # and the database is usable again
            await tx.execute("INSERT INTO t VALUES (99, 'p')")
            await tx.execute("INSERT INTO child VALUES (1, 99)")
        assert await db.fetch_value("SELECT count(*) FROM child") == 1


class TestSerialization:
    """One connection: transactions hold a lock that other tasks wait for."""

    async def test_database_call_inside_own_transaction_fails_fast(self, db: SqliteDatabase):
        """The Database (not the transaction) used by the transaction's task raises at once."""
        async with db.transaction() as tx:
            with pytest.raises(InternalServerError, match="holds an open transaction"):
                await db.execute("INSERT INTO t VALUES (1, 'a')")
            with pytest.raises(InternalServerError):
                async with db.transaction():
                    pass
            await tx.execute("INSERT INTO t VALUES (2, 'b')")
        assert await db.fetch_value("SELECT count(*) FROM t") == 1

    async def test_waiting_past_the_lock_timeout_is_unavailable(self):
        """Another task waiting longer than lock_timeout gets ServiceUnavailable."""
        db = SqliteDatabase(lock_timeout=0.05)
        await db.connect()
        release = asyncio.Event()
        held = asyncio.Event()

        async def hold() -> None:
            async with db.transaction():
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await held.wait()
        with pytest.raises(ServiceUnavailable) as caught:
            await db.fetch_value("SELECT 1")
        assert caught.value.details["reason"] == "pool_timeout"
        await db.health_check()  # the health check does not wait for the lock
        release.set()
        await holder
        assert await db.fetch_value("SELECT 1") == 1

    async def test_savepoint_in_an_aborted_transaction_fails(self, db: SqliteDatabase):
        """Opening a savepoint after a failed statement raises (PostgreSQL: 25P02)."""
        await db.execute("INSERT INTO t VALUES (1, 'a')")
        with pytest.raises(InternalServerError):  # noqa: PT012 - the block is the subject
            async with db.transaction() as tx:
                with pytest.raises(Conflict):
                    await tx.execute("INSERT INTO t VALUES (1, 'a')")
                with pytest.raises(InternalServerError) as aborted:
                    tx.transaction()
                assert aborted.value.details["sqlstate"] == "25P02"

    async def test_fetch_one_and_value_inside_a_transaction(self, db: SqliteDatabase):
        """fetch_one and fetch_value work on a transaction object."""
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (1, 'a')")
            assert await tx.fetch_one("SELECT name FROM t") == {"name": "a"}
            assert await tx.fetch_one("SELECT name FROM t WHERE id = 9") is None
            assert await tx.fetch_value("SELECT id FROM t") == 1
            assert await tx.fetch_value("SELECT id FROM t WHERE id = 9") is None
            assert repr(tx) == "<SqliteDatabase transaction open>"
        assert repr(tx) == "<SqliteDatabase transaction finished>"


class TestLifecycle:
    """connect/close edges and construction from config."""

    async def test_is_a_database_port(self):
        """SqliteDatabase satisfies the Database protocol."""
        assert isinstance(SqliteDatabase(), Database)

    async def test_from_config_reads_the_pool_timeout(self):
        """DB_POOL_TIMEOUT_S bounds the wait for the lock."""
        db = SqliteDatabase.from_config(InMemoryConfig({"DB_POOL_TIMEOUT_S": "0.5"}))
        assert db.lock_timeout == 0.5
        assert SqliteDatabase.from_config(InMemoryConfig({})).lock_timeout == 5.0

    async def test_closed_database_cannot_reconnect(self):
        """connect() after close() raises ServiceUnavailable; repr shows the state."""
        db = SqliteDatabase()
        await db.close()
        assert repr(db) == "SqliteDatabase(:memory:, closed)"
        with pytest.raises(ServiceUnavailable):
            await db.connect()

    async def test_second_close_waits_for_the_first(self, db: SqliteDatabase):
        """Two close() calls while a transaction finishes: both return, closed after."""
        release, held = asyncio.Event(), asyncio.Event()

        async def work() -> None:
            async with db.transaction() as tx:
                held.set()
                await release.wait()
                await tx.execute("INSERT INTO t VALUES (1, 'a')")

        worker = asyncio.create_task(work())
        await held.wait()
        first = asyncio.create_task(db.close(timeout=5))
        second = asyncio.create_task(db.close(timeout=5))
        await asyncio.sleep(0)  # both close() calls take their first step
        assert not first.done()
        release.set()
        await asyncio.gather(worker, first, second)
        with pytest.raises(ServiceUnavailable):
            await db.health_check()

    async def test_close_timeout_is_logged(self):
        """Giving up on a stuck transaction is logged at warning."""
        logger = RecordingLogger()
        db = SqliteDatabase(logger=logger)
        await db.connect()
        release, held = asyncio.Event(), asyncio.Event()

        async def stuck() -> None:
            async with db.transaction():
                held.set()
                await release.wait()

        task = asyncio.create_task(stuck())
        await held.wait()
        await db.close(timeout=0.01)
        logger.assert_logged("database closing with a transaction still open", level="warning")
        release.set()
        with pytest.raises(ServiceUnavailable):
            await task  # its COMMIT cannot run on a closed database


class TestSubset:
    """The documented SQL subset: PostgreSQL's types, names and NULL order; what is
    outside it fails with an error naming the construct (ADR 0011)."""

    async def test_result_columns_are_named_as_postgresql_names_them(self, db: SqliteDatabase):
        """count(*) is "count", an expression "?column?", EXISTS "exists"; unquoted
        aliases fold to lower case."""
        row = await db.fetch_one(
            "SELECT count(*), 1 + 1, EXISTS(SELECT 1 FROM t), coalesce(NULL, 2), "
            "CASE WHEN TRUE THEN 1 END, 3 AS Total, now() FROM t"
        )
        assert row is not None
        assert list(row) == ["count", "?column?", "exists", "coalesce", "case", "total", "now"]
        assert row["exists"] is False
        assert row["now"].tzinfo is UTC

    async def test_casts_to_subset_types_convert_as_postgresql(self, db: SqliteDatabase):
        """``::type`` and CAST(... AS type) give the type's value (or its data error)."""
        row = await db.fetch_one(
            "SELECT %s::uuid AS u, CAST(%s AS NUMERIC(5,2)) AS n, '1e2'::jsonb AS j, "
            "'yes'::boolean AS b, '2024-01-01 12:00+02'::timestamptz AS ts",
            ("{00000000-0000-0000-0000-000000000007}", "1.005"),
        )
        assert row == {
            "u": uuid.UUID(int=7),
            "n": Decimal("1.01"),
            "j": 100,
            "b": True,
            "ts": datetime(2024, 1, 1, 10, tzinfo=UTC),
        }
        with pytest.raises(InternalServerError) as caught:
            await db.fetch_value("SELECT %s::int", ("x",))
        assert caught.value.details["sqlstate"] == "22P02"

    async def test_nulls_sort_as_in_postgresql(self, db: SqliteDatabase):
        """NULLs come last ascending and first descending (SQLite does the reverse)."""
        await db.execute("INSERT INTO t VALUES (1, NULL), (2, 'b'), (3, 'a')")
        asc = await db.fetch_all("SELECT id FROM t ORDER BY name")
        desc = await db.fetch_all("SELECT id FROM t ORDER BY name DESC")
        assert [r["id"] for r in asc] == [3, 2, 1]
        assert [r["id"] for r in desc] == [1, 2, 3]

    async def test_numeric_values_compare_by_value(self, db: SqliteDatabase):
        """NUMERIC keys compare as numbers: 0.1 and 0.10 collide, 9 < 10."""
        await db.execute("CREATE TABLE n (v NUMERIC(6,2) UNIQUE)")
        await db.execute("INSERT INTO n VALUES (%s), (9), (10)", (Decimal("0.10"),))
        with pytest.raises(Conflict) as caught:
            await db.execute("INSERT INTO n VALUES ('0.1')")
        assert caught.value.details["constraint"] == "n_v_key"
        assert await db.fetch_value("SELECT max(v) FROM n") == Decimal("10.00")
        assert await db.fetch_value("SELECT count(*) FROM n WHERE v > %s", (Decimal("9.5"),)) == 1

    async def test_row_locks_are_accepted(self, db: SqliteDatabase):
        """FOR UPDATE / SKIP LOCKED run (the fake serializes transactions anyway)."""
        await db.execute("INSERT INTO t VALUES (1, 'a')")
        async with db.transaction() as tx:
            rows = await tx.fetch_all("SELECT id FROM t ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
        assert rows == [{"id": 1}]

    async def test_add_column_and_unique_index(self, db: SqliteDatabase):
        """ALTER TABLE ... ADD COLUMN gets the type's rules; a unique index's name is
        the constraint a duplicate reports."""
        await db.execute("ALTER TABLE t ADD COLUMN amount NUMERIC(8,2) NOT NULL DEFAULT 0")
        await db.execute("ALTER TABLE t ADD COLUMN IF NOT EXISTS amount NUMERIC(8,2)")
        await db.execute("CREATE UNIQUE INDEX t_lower_name ON t (name)")
        await db.execute("INSERT INTO t (id, name) VALUES (1, 'a')")
        assert await db.fetch_value("SELECT amount FROM t") == Decimal("0.00")
        with pytest.raises(Conflict):
            await db.execute("INSERT INTO t (id, name) VALUES (2, 'a')")
        with pytest.raises(InternalServerError) as caught:
            await db.execute("UPDATE t SET amount = %s", (Decimal("1e7"),))
        assert caught.value.details["sqlstate"] == "22003"

    async def test_like_is_case_sensitive(self, db: SqliteDatabase):
        """LIKE matches case as PostgreSQL does."""
        await db.execute("INSERT INTO t VALUES (1, 'Abc')")
        assert await db.fetch_value("SELECT count(*) FROM t WHERE name LIKE 'a%%'") == 0

    @pytest.mark.parametrize(
        ("sql", "construct"),
        [
            ("CREATE TABLE x (id SERIAL)", "SERIAL"),
            ("CREATE TABLE x (d DATE)", "DATE"),
            ("CREATE TABLE x (v VARCHAR(3))", "VARCHAR"),
            ("SELECT name FROM t WHERE name ILIKE 'a'", "ILIKE"),
            ("SELECT 1::float8", "FLOAT8"),
            ("SELECT avg(id) FROM t", "avg()"),
            ("SELECT ifnull(name, 'x') FROM t", "ifnull()"),
            ("SELECT '{}'::jsonb ->> 'a'", "->>"),
            ("SELECT CURRENT_DATE", "CURRENT_DATE"),
            ("LISTEN channel", "LISTEN"),
            ("CREATE TABLE n2 (v NUMERIC(5,2)); SELECT 1", "CREATE TABLE options"),
        ],
    )
    async def test_outside_the_subset_names_the_construct(
        self, db: SqliteDatabase, sql: str, construct: str
    ):
        """SQL the fake would answer differently fails, naming the construct."""
        with pytest.raises(InternalServerError) as caught:
            await db.execute(sql)
        assert "outside the documented subset" in caught.value.message
        assert construct.lower() in caught.value.message.lower()

    async def test_arithmetic_on_numeric_and_wrapped_aggregates_fail(self, db: SqliteDatabase):
        """SQLite would compute NUMERIC arithmetic in floating point: refused."""
        await db.execute("CREATE TABLE m (v NUMERIC(6,2))")
        for sql in ("SELECT v * 2 FROM m", "SELECT sum(v) + 1 FROM m"):
            with pytest.raises(InternalServerError, match="outside the documented subset"):
                await db.fetch_all(sql)


class TestParameterTyping:
    """Parameters typed as psycopg sends them, and expression results typed, as
    PostgreSQL answers (each expectation measured on PostgreSQL 16)."""

    async def test_a_string_compared_with_numeric_keeps_its_digits(self, db: SqliteDatabase):
        """A string compared with a NUMERIC(p,s) column is a plain numeric: not rounded
        to the column's scale, and not too large for its precision."""
        await db.execute("CREATE TABLE money (id INTEGER, n NUMERIC(12, 2))")
        await db.execute("INSERT INTO money VALUES (1, 1.01)")
        assert await db.fetch_all("SELECT id FROM money WHERE n = %s", ("1.005",)) == []
        assert await db.fetch_all("SELECT id FROM money WHERE n IN (%s)", ("1.005",)) == []
        assert await db.fetch_all("SELECT id FROM money WHERE n = %s", ("1.010",)) == [{"id": 1}]
        assert await db.fetch_all("SELECT id FROM money WHERE n < %s", ("1e20",)) == [{"id": 1}]
        # Assigned, it is rounded to the column, and overflows it, as there.
        await db.execute("UPDATE money SET n = %s", ("1.005",))
        assert await db.fetch_value("SELECT n FROM money") == Decimal("1.01")
        with pytest.raises(InternalServerError) as caught:
            await db.execute("UPDATE money SET n = %s", ("1e20",))
        assert caught.value.details["sqlstate"] == "22003"

    async def test_an_output_column_named_like_a_table_column_is_not_typed(
        self, db: SqliteDatabase
    ):
        """A CTE's or a subquery's output column that shares a table column's name has
        its own type: a parameter compared with it is not judged by the table's."""
        await db.execute("CREATE TABLE c (id UUID, name TEXT, qty INTEGER)")
        await db.execute(
            "INSERT INTO c VALUES ('00000000-0000-0000-0000-000000000001', 'n', 3)",
        )
        rows = await db.fetch_all(
            "WITH w AS (SELECT id, sum(qty) AS name FROM c GROUP BY id) "
            "SELECT name FROM w WHERE name = %s",
            (3,),
        )
        assert rows == [{"name": 3}]
        rows = await db.fetch_all(
            "SELECT u FROM (SELECT qty::text AS id, name AS u FROM c) s WHERE id = %s", ("3",)
        )
        assert rows == [{"u": "n"}]
        rows = await db.fetch_all(
            "WITH w (qty) AS (SELECT name FROM c) SELECT qty FROM w WHERE qty = %s", ("n",)
        )
        assert rows == [{"qty": "n"}]
        # A table's column is still typed.
        with pytest.raises(InternalServerError) as caught:
            await db.fetch_all("SELECT name FROM c WHERE qty = %s", ("n",))
        assert caught.value.details["sqlstate"] == "22P02"

    async def test_arithmetic_on_a_numeric_cast_is_numeric(self, db: SqliteDatabase):
        """An integer cast to NUMERIC inside arithmetic gives a Decimal, as PostgreSQL
        does (not SQLite's int or float), named ?column?."""
        await db.execute("INSERT INTO t (id) VALUES (1)")
        row = await db.fetch_one("SELECT id::numeric * 2, 1 + id::numeric(10,2) AS n FROM t")
        assert row is not None
        assert list(row) == ["?column?", "n"]
        assert all(isinstance(v, Decimal) for v in row.values())
        assert row == {"?column?": Decimal("2"), "n": Decimal("2")}

    async def test_jsonb_numbers_compare_by_value(self, db: SqliteDatabase):
        """jsonb compares numbers by value: 1, 1.0 and 1e0 are equal (parameter, literal
        or row), while each keeps the form it was written in."""
        await db.execute("CREATE TABLE docs (id INTEGER, j JSONB)")
        await db.execute("INSERT INTO docs VALUES (1, %s), (2, %s)", ('{"a": 1}', "[1.50, 0]"))
        for compared in ('{"a": 1.0}', '{"a": 1e0}', '{"a": 1.000}'):
            rows = await db.fetch_all("SELECT id FROM docs WHERE j = %s", (compared,))
            assert rows == [{"id": 1}]
        rows = await db.fetch_all("SELECT id FROM docs WHERE j = '[1.5, -0.0]'")
        assert rows == [{"id": 2}]
        assert await db.fetch_all("SELECT id FROM docs WHERE j = %s", ('{"a": 1.1}',)) == []
        assert await db.fetch_value("SELECT j FROM docs WHERE id = 2") == [1.5, 0]

    async def test_values_assigned_to_text_are_written_as_postgresql_writes_them(
        self, db: SqliteDatabase
    ):
        """A bool, float, Decimal, datetime or bytes parameter written to a TEXT column
        is stored as its type's output (a UTC session), not as SQLite's form of it."""
        values = (
            True,
            False,
            float("nan"),
            float("inf"),
            1e16,
            100.0,
            0.00001,
            Decimal("1E+2"),
            Decimal("1E-7"),
            Decimal("-0.00"),
            datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
            datetime(999, 1, 1, tzinfo=UTC),
            datetime(2024, 1, 1, 3, 4, 5),
            b"xy",
            b"",
        )
        await db.execute("CREATE TABLE notes (id INTEGER, name TEXT)")
        for n, value in enumerate(values):
            await db.execute("INSERT INTO notes (id, name) VALUES (%s, %s)", (n, value))
        rows = await db.fetch_all("SELECT name FROM notes ORDER BY id")
        assert [r["name"] for r in rows] == [
            "true",
            "false",
            "NaN",
            "Infinity",
            "1e+16",
            "100",
            "1e-05",
            "100",
            "0.0000001",
            "0.00",
            "2024-01-01 00:00:00.5+00",
            "0999-01-01 00:00:00+00",
            "2024-01-01 03:04:05",
            "\\x7879",
            "\\x",
        ]
        await db.execute("UPDATE notes SET name = %s WHERE id = 0", (False,))
        assert await db.fetch_value("SELECT name FROM notes WHERE id = 0") == "false"
