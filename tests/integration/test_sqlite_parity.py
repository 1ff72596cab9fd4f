"""SqliteDatabase and PostgresDatabase side by side: the same random tables, rows and
statements of the documented SQL subset give the same results (values and Python
types) or the same error (class and SQLSTATE); SQL outside the subset fails in the
fake with an error naming the construct."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.memory import SqliteDatabase
from adapters.postgres import PostgresDatabase, PostgresSettings
from domain_errors import DomainError, InternalServerError
from ports.database import Database
from testing._strategies_db import SubsetColumn, subset_columns, subset_values
from testing.contracts.database import shape, unique_table_name
from testing.fakes import RecordingLogger

pytestmark = pytest.mark.integration

_ORDERED = ("int4", "int8", "numeric", "text", "timestamptz")


class _Pair:
    def __init__(self, url: str) -> None:
        self.runner = asyncio.Runner()
        self.fake: Database = SqliteDatabase()
        self.real: Database = PostgresDatabase(
            PostgresSettings(url=url, pool_min_size=1, pool_max_size=2), RecordingLogger()
        )

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)


@pytest.fixture(scope="module")
def pair(postgres_url: str) -> Iterator[_Pair]:
    p = _Pair(postgres_url)
    p.run(p.fake.connect())
    p.run(p.real.connect())
    try:
        yield p
    finally:
        p.run(p.fake.close())
        p.run(p.real.close())
        p.runner.close()


async def _outcome(db: Database, sql: str, params: Any) -> Any:
    try:
        return ("rows", shape([dict(r) for r in await db.fetch_all(sql, params)]))
    except DomainError as exc:
        return ("error", type(exc).__name__, exc.details.get("sqlstate"))


def _statements(
    table: str, columns: list[SubsetColumn], pivots: dict[str, Any]
) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        (f"SELECT * FROM {table} ORDER BY id", ()),
        (f"SELECT count(*), EXISTS(SELECT 1 FROM {table} WHERE id > 1) FROM {table}", ()),
    ]
    for c in columns:
        n = c.name
        out.append(
            (f"SELECT count({n}), {n} IS NULL AS missing FROM {table} GROUP BY 2 ORDER BY 2", ())
        )
        for agg in ("sum", "min", "max"):
            out.append((f"SELECT {agg}({n}) FROM {table}", ()))
        out.append((f"SELECT coalesce(sum({n}), 0) AS total FROM {table}", ()))
        if c.kind in _ORDERED:
            p = pivots[n]
            out += [
                (f"SELECT id, {n} > %s FROM {table} ORDER BY {n}, id", (p,)),
                (f"SELECT id FROM {table} WHERE {n} < %s ORDER BY {n} DESC, id", (p,)),
                (f"SELECT id, {n} FROM {table} WHERE {n} = %s ORDER BY id", (p,)),
            ]
    return out


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_same_results_on_both(pair: _Pair, data: st.DataObject) -> None:
    """Every statement answers alike on the fake and on PostgreSQL."""
    columns = data.draw(subset_columns(), label="columns")
    rows = data.draw(
        st.lists(st.fixed_dictionaries({c.name: subset_values(c) for c in columns}), max_size=5),
        label="rows",
    )
    pivots = {
        c.name: data.draw(subset_values(c).filter(lambda v: v is not None))
        for c in columns
        if c.kind in _ORDERED
    }
    table = unique_table_name("hxp")
    ddl = ", ".join(f"{c.name} {c.sql_type}" for c in columns)
    names = ", ".join(c.name for c in columns)
    marks = ", ".join(["%s"] * len(columns))

    async def body(db: Database) -> list[Any]:
        await db.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, {ddl})")
        try:
            for i, row in enumerate(rows):
                await db.execute(
                    f"INSERT INTO {table} (id, {names}) VALUES (%s, {marks})",
                    (i, *(row[c.name] for c in columns)),
                )
            return [await _outcome(db, s, p) for s, p in _statements(table, columns, pivots)]
        finally:
            await db.execute(f"DROP TABLE IF EXISTS {table}")

    fake, real = pair.run(body(pair.fake)), pair.run(body(pair.real))
    for (sql, _), got, want in zip(_statements(table, columns, pivots), fake, real, strict=True):
        assert got == want, sql


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("CREATE TABLE {t} (id SERIAL PRIMARY KEY)", "SERIAL"),
        ("CREATE TABLE {t} (at TIMESTAMP)", "TIMESTAMP"),
        ("CREATE TABLE {t} (x REAL)", "REAL"),
        ("CREATE TABLE {t} (x VARCHAR(10))", "VARCHAR"),
        ("SELECT 'a' ILIKE 'A'", "ILIKE"),
        ("SELECT 1::float8", "FLOAT8"),
        ("SELECT avg(x) FROM (SELECT 1 AS x) s", "avg()"),
        ("SELECT now() - INTERVAL '1 day'", "INTERVAL"),
        ("SELECT '{{}}'::jsonb -> 'a'", "->"),
        ("SELECT 1 = ANY(%s)", "ANY"),
        ("SELECT ifnull(NULL, 1)", "ifnull()"),
        ("SELECT date_trunc('day', now())", "date_trunc()"),
        ("SELECT DISTINCT ON (x) x FROM (SELECT 1 AS x) s", "DISTINCT ON"),
        ("SET TIME ZONE 'UTC'", "SET"),
        ("SELECT 9223372036854775808 - 1", "past BIGINT"),
    ],
)
def test_outside_the_subset_the_fake_names_the_construct(
    pair: _Pair, sql: str, construct: str
) -> None:
    """SQL that PostgreSQL runs but the fake would answer differently is refused with
    an error naming the construct (never a different answer)."""
    text = sql.format(t=unique_table_name("hxp"))
    params = ([1, 2],) if "%s" in text else ()
    with pytest.raises(InternalServerError) as caught:
        pair.run(pair.fake.execute(text, params))
    assert "outside the documented subset" in str(caught.value)
    assert construct.lower() in str(caught.value).lower()


@pytest.mark.parametrize(
    "expression",
    [
        "a + 1",
        "a * 2",
        "(a + 1) * 2",
        "a - -5",
        "a * b",
        "b + 1",
        "b * 9223372",
        "b * 2 - b",
        "a * 2::bigint",
        "a * 2147483648",
        "-a * 2",
    ],
)
def test_integer_arithmetic_answers_or_overflows_alike(pair: _Pair, expression: str) -> None:
    """Arithmetic on INTEGER and BIGINT columns gives PostgreSQL's value and column name,
    or its out-of-range error (SQLite would widen the integer or return a float)."""
    table = unique_table_name("hxp")

    async def body(db: Database) -> Any:
        await db.execute(f"CREATE TABLE {table} (a INTEGER, b BIGINT)")
        try:
            await db.execute(
                f"INSERT INTO {table} VALUES (%s, %s)", (2_000_000_000, 9_000_000_000_000_000_000)
            )
            return await _outcome(db, f"SELECT {expression} FROM {table}", ())
        finally:
            await db.execute(f"DROP TABLE IF EXISTS {table}")

    assert pair.run(body(pair.fake)) == pair.run(body(pair.real))


@pytest.mark.parametrize(
    ("stored", "compared"),
    [
        ('{"a": 1, "b": [1, 2]}', '{"b":[1,2],"a":1}'),
        ('{"a": 1}', '{"a": 1, "a": 1}'),
        ('{"a": 1}', '{"a": 2}'),
        ('[1, "x", null]', '[1,"x",null]'),
        ('"text"', '"text"'),
        ('{"a": 1}', '{"a": 1.0}'),
        ("[1.50, 0]", "[1.5, -0.0]"),
        ("100", "1e2"),
        ('{"a": 1}', '{"a": 1.1}'),
    ],
)
def test_jsonb_equality_compares_values_alike(pair: _Pair, stored: str, compared: str) -> None:
    """``=`` on a JSONB column compares JSON values (key order and spacing aside), as
    PostgreSQL does, not the text a parameter was written in."""
    table = unique_table_name("hxp")

    async def body(db: Database) -> Any:
        await db.execute(f"CREATE TABLE {table} (id INTEGER, j JSONB)")
        try:
            await db.execute(f"INSERT INTO {table} VALUES (1, %s)", (stored,))
            return await _outcome(db, f"SELECT id FROM {table} WHERE j = %s", (compared,))
        finally:
            await db.execute(f"DROP TABLE IF EXISTS {table}")

    assert pair.run(body(pair.fake)) == pair.run(body(pair.real))


_TYPED_COLUMNS = {
    "i4": ("INTEGER", 5),
    "i8": ("BIGINT", 2**40),
    "n": ("NUMERIC(12,2)", Decimal("1.25")),
    "b": ("BOOLEAN", True),
    "t": ("TEXT", "abc"),
    "ts": ("TIMESTAMPTZ", datetime(2024, 1, 1, tzinfo=UTC)),
    "j": ("JSONB", '{"a": 1}'),
    "u": ("UUID", uuid.UUID(int=5)),
    "by": ("BYTEA", b"x"),
}
_PYTHON_VALUES = [
    True,
    5,
    2**40,
    1.5,
    2.5,
    Decimal("1.25"),
    "7",
    "abc",
    "true",
    "2024-01-01 00:00:00+00",
    '{"a":1}',
    "00000000-0000-0000-0000-000000000005",
    "\\x78",
    datetime(2024, 1, 1, tzinfo=UTC),
    uuid.UUID(int=5),
    b"x",
    # edges of the conversions: NaN and infinities, signed zero, float8's exponent
    # form, a naive timestamp, a date, bad bytea input
    Decimal("NaN"),
    Decimal("Infinity"),
    float("nan"),
    -0.0,
    1.5e-05,
    datetime(2024, 1, 1, 12, 30),
    date(2024, 1, 1),
    "\\xzz",
    memoryview(b"ab"),
]


async def _typed_outcome(db: Database, sql: str, params: Any) -> Any:
    try:
        if sql.startswith("SELECT"):
            return ("rows", shape([dict(r) for r in await db.fetch_all(sql, params)]))
        return ("count", await db.execute(sql, params))
    except DomainError as exc:
        return ("error", type(exc).__name__, exc.details.get("sqlstate"))


@pytest.mark.parametrize("column", list(_TYPED_COLUMNS))
def test_parameters_of_another_type_are_refused_or_read_alike(pair: _Pair, column: str) -> None:
    """A Python value written to a column or compared with one is taken, converted or
    refused (42804 on assignment, 42883 in a comparison, the column type's data error
    for a string it cannot read) as psycopg and PostgreSQL do, and compares alike; or
    the fake refuses it as outside its subset."""
    table = unique_table_name("hxp")
    ddl = ", ".join(f"{name} {sql_type}" for name, (sql_type, _) in _TYPED_COLUMNS.items())
    statements = [
        (f"INSERT INTO {table} (id, {column}) VALUES (2, %s)", 1),
        (f"INSERT INTO {table} (id, {column}) VALUES (3, %s), (4, (%s))", 2),
        (f"UPDATE {table} SET {column} = %s WHERE id = 2", 1),
        (f"SELECT id FROM {table} WHERE {column} = %s ORDER BY id", 1),
        (f"SELECT id FROM {table} WHERE %s < {column} ORDER BY id", 1),
        (f"SELECT id FROM {table} WHERE {column} IN (%s, %s) ORDER BY id", 2),
        (f"SELECT t.id FROM {table} t WHERE t.{column} <> %s ORDER BY t.id", 1),
    ]

    async def body(db: Database) -> list[Any]:
        await db.execute(f"CREATE TABLE {table} (id INTEGER, {ddl})")
        try:
            names = ", ".join(_TYPED_COLUMNS)
            marks = ", ".join(["%s"] * len(_TYPED_COLUMNS))
            await db.execute(
                f"INSERT INTO {table} (id, {names}) VALUES (1, {marks})",
                tuple(value for _, value in _TYPED_COLUMNS.values()),
            )
            out = []
            for value in _PYTHON_VALUES:
                for sql, count in statements:
                    out.append(await _typed_outcome(db, sql, (value,) * count))
                await db.execute(f"DELETE FROM {table} WHERE id > 1")
            return out
        finally:
            await db.execute(f"DROP TABLE IF EXISTS {table}")

    fake, real = pair.run(body(pair.fake)), pair.run(body(pair.real))
    cases = [(repr(v), sql) for v in _PYTHON_VALUES for sql, _ in statements]
    # The fake may refuse what it cannot answer (NaN in a NUMERIC column), by name;
    # it never answers differently.
    refused = ("error", "Unsupported", None)
    differing = [
        (c, f, r) for c, f, r in zip(cases, fake, real, strict=True) if f not in (r, refused)
    ]
    assert differing == []
