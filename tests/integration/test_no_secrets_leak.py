"""Row values from PostgreSQL's error reports never leave (ADR 0026): not in the domain
error's message, not in a client body, not in the stack the logger writes (the driver
error chained as ``__cause__`` included), while the SQLSTATE, constraint and column
names stay for operators."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from adapters.asgi import DomainErrorMiddleware
from adapters.memory import SqliteDatabase
from adapters.postgres import PostgresDatabase, PostgresSettings
from adapters.structlog_logger import StructlogLogger
from domain_errors import Conflict, DomainError, to_http_response, to_problem_details
from ports.database import Database
from testing.fakes import RecordingLogger

pytestmark = pytest.mark.integration

SECRET = "tok_LIVE_9fQ2x7Kp"  # a row value that looks like a secret
_tables = itertools.count(1)


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[PostgresDatabase]:
    db = PostgresDatabase(
        PostgresSettings(url=postgres_url, pool_min_size=1, pool_max_size=2), RecordingLogger()
    )
    await db.connect()
    yield db
    await db.close()


@pytest.fixture
async def sqlite() -> AsyncIterator[SqliteDatabase]:
    db = SqliteDatabase()
    await db.connect()
    yield db
    await db.close()


async def _failures(db: Database, table: str) -> dict[str, DomainError]:
    """Unique, check and NOT NULL violations (and, for PostgreSQL, a bigint that is not
    a number) each carrying SECRET as a row value."""
    await db.execute(
        f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, token TEXT NOT NULL UNIQUE,"
        f" amount BIGINT CONSTRAINT {table}_amount_positive CHECK (amount >= 0), note TEXT)"
    )
    await db.execute(f"INSERT INTO {table} VALUES (1, %s, 1, %s)", (SECRET, SECRET))
    insert = f"INSERT INTO {table} (id, token, amount, note) VALUES (%s, %s, %s, %s)"
    statements: dict[str, tuple[str, tuple[Any, ...]]] = {
        "unique": (insert, (2, SECRET, 1, SECRET)),
        "check": (insert, (3, SECRET + "-2", -1, SECRET)),
        "not_null": (insert, (4, None, 1, SECRET)),
    }
    if isinstance(db, PostgresDatabase):
        statements["bigint"] = (f"SELECT * FROM {table} WHERE id = %s::bigint", (SECRET,))
    errors: dict[str, DomainError] = {}
    for name, (sql, params) in statements.items():
        try:
            await db.execute(sql, params)
        except DomainError as exc:
            errors[name] = exc
    return errors


def _outputs(error: DomainError) -> str:
    """Everything that leaves for this error: its message and str, client bodies, the
    JSON line StructlogLogger writes with its stack, the 5xx log line of the HTTP edge."""
    stream = io.BytesIO()
    StructlogLogger(service="t", stream=stream).error("query failed", exc=error)
    recording = RecordingLogger()
    recording.error("query failed", exc=error)
    parts = [
        error.message,
        str(error),
        json.dumps(to_http_response(error).to_dict()),
        json.dumps(to_problem_details(error), default=str),
        stream.getvalue().decode(),
        json.dumps([r.to_dict() for r in recording.records], default=str),
    ]
    return "\n".join(parts)


async def _http_body(error: DomainError) -> str:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise error

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    log = RecordingLogger()
    await DomainErrorMiddleware(app, logger=log)(
        {"type": "http", "method": "POST", "path": "/t", "headers": []}, receive, send
    )
    body = b"".join(m.get("body", b"") for m in sent).decode()
    return body + json.dumps([r.to_dict() for r in log.records], default=str)


class TestPostgres:
    async def test_no_row_value_leaves(self, pg: PostgresDatabase) -> None:
        table = f"leak_pg_{next(_tables)}"
        try:
            errors = await _failures(pg, table)
        finally:
            await pg.execute(f"DROP TABLE IF EXISTS {table}")
        assert set(errors) == {"unique", "check", "bigint", "not_null"}
        for name, error in errors.items():
            out = _outputs(error) + await _http_body(error)
            assert SECRET not in out, name
            assert "9fQ2x7Kp" not in out, name
            cause = error.__cause__
            assert isinstance(cause, psycopg.Error), name  # the driver error is kept
            assert SECRET not in str(cause), name
            assert error.details["sqlstate"] == cause.sqlstate, name
            assert error.public_details is False

    async def test_operators_keep_sqlstate_constraint_and_column(
        self, pg: PostgresDatabase
    ) -> None:
        table = f"leak_pg_{next(_tables)}"
        try:
            errors = await _failures(pg, table)
        finally:
            await pg.execute(f"DROP TABLE IF EXISTS {table}")
        unique, check, not_null = errors["unique"], errors["check"], errors["not_null"]
        assert isinstance(unique, Conflict)
        assert dict(unique.details) == {
            "sqlstate": "23505",
            "constraint": f"{table}_token_key",
            "table": table,
        }
        assert check.details["constraint"] == f"{table}_amount_positive"
        assert (not_null.details["sqlstate"], not_null.details["column"]) == ("23502", "token")
        assert errors["bigint"].details["sqlstate"] == "22P02"
        # ...in the driver error's text too, for the logged stack
        assert f"{table}_token_key" in str(unique.__cause__)
        # ...and never in a client body: a Conflict names no table nor constraint
        for body in (to_http_response(unique).to_dict(), to_problem_details(unique)):
            text = json.dumps(body)
            assert table not in text
            assert "token_key" not in text

    async def test_http_edge_logs_details_for_operators(self, pg: PostgresDatabase) -> None:
        table = f"leak_pg_{next(_tables)}"
        try:
            errors = await _failures(pg, table)
        finally:
            await pg.execute(f"DROP TABLE IF EXISTS {table}")
        out = await _http_body(errors["unique"])
        assert f"{table}_token_key" in out.split("}", 1)[1]  # in the log, after the body
        assert f"{table}_token_key" not in out.split("}", 1)[0]

    async def test_values_quoted_outside_data_exceptions_are_withheld(
        self, pg: PostgresDatabase
    ) -> None:
        """Not only class 22 quotes values: a tsquery syntax error (42601), a parameter
        used as a name (42P01, 42704) and a trigger's RAISE (P0001, message dropped)."""
        n = next(_tables)
        table, function = f"leak_pg_{n}", f"leak_pg_raise_{n}"
        await pg.execute(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'bad card %%', NEW.s; END $$"
        )
        await pg.execute(f"CREATE TABLE {table} (s TEXT)")
        await pg.execute(
            f"CREATE TRIGGER {table}_raise BEFORE INSERT ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION {function}()"
        )
        statements = {
            "42601": ("SELECT to_tsquery(%s)", (f"{SECRET} {SECRET}",)),
            "42P01": ("SELECT %s::text::regclass", (SECRET,)),
            "42704": ("SELECT set_config(%s, 'x', false)", (SECRET,)),
            "P0001": (f"INSERT INTO {table} VALUES (%s)", (SECRET,)),
        }
        errors: dict[str, DomainError] = {}
        try:
            for name, (sql, params) in statements.items():
                try:
                    await pg.fetch_all(sql, params)
                except DomainError as exc:
                    errors[name] = exc
        finally:
            await pg.execute(f"DROP TABLE IF EXISTS {table}")
            await pg.execute(f"DROP FUNCTION IF EXISTS {function}()")
        assert set(errors) == set(statements)
        for sqlstate, error in errors.items():
            out = _outputs(error) + await _http_body(error)
            assert "9fQ2x7Kp" not in out, sqlstate
            cause = error.__cause__
            assert isinstance(cause, psycopg.Error), sqlstate
            assert cause.sqlstate == error.details["sqlstate"] == sqlstate
            assert "9fQ2x7Kp" not in str(cause), sqlstate
            assert sqlstate in str(cause)  # the SQLSTATE stays for operators
        assert "bad card" not in str(errors["P0001"].__cause__)  # user-raised: dropped


class TestSqlite:
    async def test_no_row_value_leaves(self, sqlite: SqliteDatabase) -> None:
        errors = await _failures(sqlite, "leak_sqlite")
        assert set(errors) == {"unique", "check", "not_null"}
        for name, error in errors.items():
            out = _outputs(error) + await _http_body(error)
            assert SECRET not in out, name
            assert error.details["sqlstate"], name
        for body in (
            to_http_response(errors["unique"]).to_dict(),
            to_problem_details(errors["unique"]),
        ):
            assert "leak_sqlite" not in json.dumps(body)
