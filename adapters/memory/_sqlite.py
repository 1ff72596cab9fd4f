"""SqliteDatabase: the fake :class:`ports.database.Database`, on stdlib sqlite3 in memory.

It passes the same contract suite (``testing.contracts.database``) as
:class:`adapters.postgres.PostgresDatabase`, on the SQL both speak. Differences from
PostgreSQL are listed in ADR 0011; the short version:

**Placeholders.** psycopg's ``%s`` / ``%b`` / ``%t`` (positional) and ``%(name)s``
(named) are rewritten to SQLite's ``?``; ``%%`` is a literal ``%``. As with psycopg, the
query is always parsed for placeholders (``%`` must be doubled even inside string
literals), positional and named styles cannot be mixed, and a wrong number or shape of
parameters raises ``InternalServerError``. One statement per call.

**Types and the SQL subset** (ADR 0011, README "SQL subset and types"). For
``INTEGER``, ``BIGINT``, ``NUMERIC(p,s)``, ``BOOLEAN``, ``TEXT``, ``TIMESTAMPTZ``,
``JSONB``, ``UUID`` (and ``BYTEA``) columns and ``count``/``sum``/``min``/``max`` over
them, the fake returns the Python values and types psycopg returns from PostgreSQL
(``Decimal`` with the column's scale, exact ``sum``, ``bool`` for boolean expressions,
aware UTC ``datetime`` in time order, ``dict``/``list``, ``UUID``), rejects what
PostgreSQL rejects with its SQLSTATE, and names constraints and result columns as
PostgreSQL does. Statements are checked and rewritten by ``_sqlite_sql`` (tokenizer,
``CREATE TABLE`` rewrite, result typing) on the types of ``_sqlite_types``; SQL outside
the subset raises ``InternalServerError`` "SqliteDatabase does not support <construct>
(outside the documented subset)". Parameters: ``None``, ``bool``, ``int`` (64-bit),
``float``, ``str``, ``bytes``, ``datetime`` (bound as UTC text), ``Decimal``, ``UUID``;
a lone surrogate or NUL in a ``str`` is ``BadRequest`` naming its position.

**Transactions and concurrency.** One connection, serialized by an ``asyncio.Lock``:
a transaction holds the lock from ``BEGIN`` to ``COMMIT``/``ROLLBACK``, and every other
task's statements wait for it (for up to ``lock_timeout`` seconds, then
``ServiceUnavailable``, as a pool timeout would). So another task never sees or
interleaves with an open transaction; unlike PostgreSQL, it waits instead of reading
the last committed state. Calling the *Database* (not the transaction object) from
the task that holds an open transaction raises ``InternalServerError`` at once instead
of deadlocking. Savepoints nest as on PostgreSQL, and an error inside a transaction
aborts it as PostgreSQL does: later statements raise ``InternalServerError`` until a
savepoint block rolls back, and leaving the block normally rolls it back and raises
``InternalServerError``.

**Errors.** ``UNIQUE``/``PRIMARY KEY`` and ``FOREIGN KEY`` violations (foreign keys are
enforced: ``PRAGMA foreign_keys=ON``) -> ``Conflict`` with ``details`` as PostgreSQL
reports them (``sqlstate`` 23505/23503, ``constraint``, ``table``); NOT NULL and CHECK
-> ``InternalServerError`` (23502 with ``table``/``column``, 23514 with ``constraint``);
a value the column type rejects -> ``InternalServerError`` with PostgreSQL's SQLSTATE;
other failures -> ``InternalServerError`` (SQLite's own message is kept: it never
contains parameter values); calls before ``connect()`` or after ``close()`` ->
``ServiceUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final, Literal

from adapters._config_base import HOUR, NumberRule, check_number
from adapters.redaction import redact_error_text, safe_str
from domain_errors import (
    BadRequest,
    Conflict,
    DomainError,
    ErrorCode,
    InternalServerError,
    ServiceUnavailable,
)
from ports.clock import Clock
from ports.config import ConfigSource
from ports.database import Params, Row, Transaction
from ports.logger import Logger

from ._sqlite_params import check_parameters
from ._sqlite_sql import Prepared, Schema, prepare
from ._sqlite_types import HINTS, SqlDataError, adapt_datetime, install, take_fault

_LOCK_TIMEOUT: Final = NumberRule(0, HOUR, low_open=True)

__all__ = ["SqliteDatabase"]

_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]*)\))?(?P<kind>[sbt])")
_NATIVE: Final = frozenset({int, float, str, bytes, type(None), bool})


@functools.lru_cache(maxsize=1024)
def _translate(sql: str) -> tuple[str, int, tuple[str, ...]]:
    """``sql`` with psycopg placeholders as ``?``: (text, positional count, names)."""
    out: list[str] = []
    names: list[str] = []
    positional = 0
    i = 0
    while True:
        j = sql.find("%", i)
        if j < 0:
            out.append(sql[i:])
            break
        out.append(sql[i:j])
        if sql.startswith("%%", j):
            out.append("%")
            i = j + 2
            continue
        match = _PLACEHOLDER.match(sql, j)
        if match is None:
            raise InternalServerError(
                "invalid placeholder: only %s, %b, %t, %(name)s and %% (a literal %) are allowed"
            )
        if match["name"] is None:
            positional += 1
        else:
            names.append(match["name"])
        out.append("?")
        i = match.end()
    if positional and names:
        raise InternalServerError("positional and named placeholders cannot be mixed")
    return "".join(out), positional, tuple(names)


def _adapt(value: Any) -> Any:
    if type(value) in _NATIVE:
        return value
    if isinstance(value, datetime):
        return adapt_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return value


def _bind(sql: str, params: Params) -> tuple[str, tuple[Any, ...]]:
    if isinstance(params, str | bytes) or not isinstance(params, Sequence | Mapping):
        raise InternalServerError(
            "invalid query parameters: query parameters should be a sequence or a mapping, "
            f"got {type(params).__name__}"
        )
    text, positional, names = _translate(sql)
    if names:
        if not isinstance(params, Mapping):
            raise InternalServerError(
                "invalid query parameters: named placeholders require a mapping of parameters"
            )
        missing = [name for name in names if name not in params]
        if missing:
            raise InternalServerError(f"query parameter missing: {', '.join(missing)}")
        values: Sequence[Any] = [params[name] for name in names]
    elif isinstance(params, Mapping):
        if positional:
            raise InternalServerError(
                "invalid query parameters: positional placeholders (%s) require a sequence "
                "of parameters"
            )
        values = ()
    else:
        if len(params) != positional:
            raise InternalServerError(
                f"the query has {positional} placeholders but {len(params)} parameters were passed"
            )
        values = params
    for position, value in enumerate(values, 1):
        if isinstance(value, str):
            _check_text(value, names[position - 1] if names else position)
    return text, tuple(values)


def _check_text(value: str, where: int | str) -> None:
    """PostgreSQL's rule for text parameters: UTF-8 encodable, no NUL character."""
    try:
        value.encode()
    except UnicodeEncodeError:
        reason = "it is not valid Unicode text (a lone surrogate)"
    else:
        if "\x00" not in value:
            return
        reason = "PostgreSQL text cannot contain NUL (0x00) characters"
    label = f"%({where})s" if isinstance(where, str) else f"${where}"
    raise BadRequest(
        f"query parameter {label} is not valid text: {reason}",
        details={"parameter": where},
    )


_CONFLICTS: Final = {
    "SQLITE_CONSTRAINT_UNIQUE": ("unique", "23505", ErrorCode.DUPLICATE),
    "SQLITE_CONSTRAINT_PRIMARYKEY": ("unique", "23505", ErrorCode.DUPLICATE),
    "SQLITE_CONSTRAINT_FOREIGNKEY": ("foreign key", "23503", ErrorCode.CONFLICT),
}
_INTEGRITY_STATES: Final = {
    "SQLITE_CONSTRAINT_NOTNULL": "23502",
    "SQLITE_CONSTRAINT_CHECK": "23514",
}


_CONFLICT_MESSAGES: Final = {  # as PostgresDatabase words them: no table, no constraint
    "unique": "the record conflicts with an existing one (a duplicate value)",
    "foreign key": "the change breaks a reference between records",
}


_CONSTRAINT_CLASSES: Final = {"23502": "NotNullViolation", "23514": "CheckViolation"}


def _map_error(
    exc: Exception, schema: Schema | None = None, foreign_key: tuple[str, str] | None = None
) -> DomainError:
    """The domain error for a sqlite3 error (the caller chains ``exc`` as cause).

    Constraints are named as PostgreSQL names them (``details``, for operators only):
    ``schema`` maps SQLite's ``table.column`` report to the constraint's name, and
    ``foreign_key`` is the (table, constraint) a failed reference was traced to.
    """
    fault = take_fault()
    if fault is not None:
        return fault
    name = str(getattr(exc, "sqlite_errorname", ""))
    message = redact_error_text(safe_str(exc))
    reported = message.partition("failed: ")[2]
    table = reported.partition(".")[0] if "." in reported else "?"
    known = schema.tables.get(table) if schema is not None else None
    if name in _CONFLICTS:
        kind, sqlstate, code = _CONFLICTS[name]
        constraint = reported or "?"
        if kind == "foreign key":
            table, constraint = foreign_key or ("?", "?")
        elif known is not None:
            columns = frozenset(c.partition(".")[2] for c in reported.split(", "))
            constraint = known.uniques.get(columns, constraint)
        return Conflict(
            _CONFLICT_MESSAGES[kind],
            code=code,
            details={"constraint": constraint, "table": table, "sqlstate": sqlstate},
            public_details=False,
        )
    if isinstance(exc, OverflowError):
        return InternalServerError(
            "database error NumericValueOutOfRange (SQLSTATE 22003): integer out of range",
            details={"sqlstate": "22003"},
            public_details=False,
        )
    if name in _INTEGRITY_STATES:
        sqlstate = _INTEGRITY_STATES[name]
        details = {"sqlstate": sqlstate}
        if sqlstate == "23502" and "." in reported:
            details |= {"table": table, "column": reported.partition(".")[2]}
        elif sqlstate == "23514" and reported:
            owner = schema.table_of_check(reported) if schema is not None else None
            details |= {"constraint": reported, "table": owner or "?"}
        return InternalServerError(
            f"database error {_CONSTRAINT_CLASSES[sqlstate]} (SQLSTATE {sqlstate})",
            details=details,
            public_details=False,
        )
    return InternalServerError(
        f"database error {type(exc).__name__}: {message}", public_details=False
    )


def _trace_foreign_key(conn: _Connection, text: str, values: tuple[Any, ...]) -> tuple[str, str]:
    """(table, constraint) of the reference ``text`` breaks: the statement is run again
    in a savepoint with foreign keys deferred, and SQLite's check names the row."""
    found: list[Any] = []
    try:
        conn.execute("SAVEPOINT hx_fk_trace")
        try:
            conn.execute("PRAGMA defer_foreign_keys = ON")
            if text:
                conn.execute(text, values)
            found = conn.execute("PRAGMA foreign_key_check").fetchall()
        finally:
            conn.execute("ROLLBACK TO hx_fk_trace")
            conn.execute("RELEASE hx_fk_trace")
            conn.execute("PRAGMA defer_foreign_keys = OFF")
    except (sqlite3.Error, SqlDataError):
        take_fault()
    for child, _rowid, _parent, fkid in found:
        table = conn.schema.tables.get(child)
        listed = conn.execute(f'PRAGMA foreign_key_list("{child}")').fetchall()
        columns = tuple(row[3] for row in listed if row[0] == fkid)
        return child, table.foreign_keys.get(columns, "?") if table is not None else "?"
    return "?", "?"


class _TxState:
    """State shared by a top-level transaction and its savepoints."""

    __slots__ = ("aborted", "depth")

    def __init__(self) -> None:
        self.aborted = False
        self.depth = 0


class _SqliteTransaction:
    """A :class:`ports.database.Transaction` (or savepoint) on the fake."""

    __slots__ = ("_active", "_db", "_state")

    def __init__(self, db: SqliteDatabase, state: _TxState) -> None:
        self._db = db
        self._state = state
        self._active = True

    def _check(self) -> _Connection:
        if not self._active:
            raise InternalServerError("transaction used after its block ended")
        conn = self._db._open_connection()
        if self._state.aborted:
            raise InternalServerError(
                "database error InFailedSqlTransaction (SQLSTATE 25P02): current transaction "
                "is aborted, commands ignored until end of transaction block",
                details={"sqlstate": "25P02"},
            )
        return conn

    def _run(self, sql: str, params: Params) -> _Result:
        conn = self._check()
        _bind(sql, params)  # a parameter psycopg refuses to send aborts nothing
        try:
            return _run(conn, sql, params)
        except DomainError:
            self._state.aborted = True
            raise

    async def execute(self, sql: str, params: Params = ()) -> int:
        return _rowcount(*self._run(sql, params))

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = _rows(*self._run(sql, params))
        return rows[0] if rows else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return _rows(*self._run(sql, params))

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        cur, rows = self._run(sql, params)
        _require_result(cur)
        return rows[0][0] if rows else None

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        self._check()
        return self._db._savepoint(self._state)

    def __repr__(self) -> str:
        return f"<SqliteDatabase transaction {'open' if self._active else 'finished'}>"


_Result = tuple[sqlite3.Cursor, list[Any] | None]


class _Connection(sqlite3.Connection):
    """The fake's connection: sqlite3's, plus what it knows of the tables it made."""

    schema: Schema

    def table_exists(self, name: str) -> bool:
        found = self.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return found is not None


def _run(conn: _Connection, sql: str, params: Params) -> _Result:
    """Run one statement; return the cursor and, if it produced rows, the rows."""
    text, raw = _bind(sql, params)
    schema = conn.schema
    prepared = prepare(text, schema, conn.table_exists)
    take_fault()
    if prepared.parameters:
        raw = tuple(check_parameters(raw, prepared.parameters))
    values = tuple(_adapt(v) for v in raw)
    try:
        cur = conn.execute(prepared.text, values)
        rows = cur.fetchall() if cur.description is not None else None
        for statement in prepared.after:
            conn.execute(statement)
    except (sqlite3.Error, OverflowError) as exc:
        foreign_key = None
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_FOREIGNKEY":
            foreign_key = _trace_foreign_key(conn, prepared.text, values)
        raise _map_error(exc, schema, foreign_key) from exc
    _learn(schema, prepared)
    if rows and prepared.hints:
        rows = [_typed(row, prepared) for row in rows]
    return cur, rows


def _learn(schema: Schema, prepared: Prepared) -> None:
    if prepared.table is not None:
        schema.tables[prepared.table.name] = prepared.table
        schema.changed()
    if prepared.dropped:
        for name in prepared.dropped:
            schema.tables.pop(name, None)
        schema.changed()


def _typed(row: tuple[Any, ...], prepared: Prepared) -> tuple[Any, ...]:
    values = list(row)
    for position, hint in prepared.hints:
        if values[position] is not None:
            values[position] = HINTS[hint](values[position])
    return tuple(values)


def _rowcount(cur: sqlite3.Cursor, rows: list[Any] | None) -> int:
    return len(rows) if rows is not None else cur.rowcount


def _require_result(cur: sqlite3.Cursor) -> None:
    if cur.description is None:
        raise InternalServerError(
            "database error ProgrammingError: the last operation didn't produce records"
        )


def _rows(cur: sqlite3.Cursor, rows: list[Any] | None) -> list[Row]:
    _require_result(cur)
    names = [column[0] for column in cur.description]
    return [dict(zip(names, row, strict=True)) for row in rows or ()]


class SqliteDatabase:
    """:class:`ports.database.Database` on one in-memory SQLite connection.

    The constructor does no I/O; ``connect()`` creates the (empty) database and
    ``close()`` discards it. See the module docstring for the SQL subset, type
    mapping, concurrency (transactions are serialized) and error mapping.
    """

    transactions_run_concurrently: Final = False
    """Another task's statements wait while a transaction is open (see module docs)."""

    def __init__(self, *, lock_timeout: float = 10.0, logger: Logger | None = None) -> None:
        self.lock_timeout = lock_timeout
        self._logger = logger
        self._conn: _Connection | None = None
        self._state: Literal["new", "open", "closing", "closed"] = "new"
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    @classmethod
    def from_config(
        cls, config: ConfigSource, *, logger: Logger | None = None, clock: Clock | None = None
    ) -> SqliteDatabase:
        """A fake database; ``DB_POOL_TIMEOUT_S`` (5; > 0 and <= 3600, as for PostgreSQL)
        bounds the wait for the lock."""
        lock_timeout = config.get_float("DB_POOL_TIMEOUT_S", 5.0)
        check_number("DB_POOL_TIMEOUT_S", lock_timeout, _LOCK_TIMEOUT)
        return cls(lock_timeout=lock_timeout, logger=logger)

    def __repr__(self) -> str:
        return f"SqliteDatabase(:memory:, {self._state})"

    # --- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the in-memory database (foreign keys on). Idempotent once open."""
        if self._state == "open":
            return
        if self._state != "new":
            raise self._unavailable()
        conn = sqlite3.connect(
            ":memory:",
            isolation_level=None,
            check_same_thread=False,
            detect_types=sqlite3.PARSE_DECLTYPES,
            factory=_Connection,
        )
        conn.schema = Schema()
        install(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA case_sensitive_like = ON")  # LIKE is case-sensitive in PG
        self._conn = conn
        self._state = "open"

    async def health_check(self) -> None:
        """``SELECT 1`` (does not wait for an open transaction)."""
        _run(self._open_connection(), "SELECT 1", ())

    async def close(self, timeout: float = 5.0) -> None:
        """Refuse new work, wait up to ``timeout`` for the open transaction, then close."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._state == "closing":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._lock.acquire()
                    self._lock.release()
            return
        self._state = "closing"
        conn = self._open_connection()
        acquired = False
        try:
            async with asyncio.timeout(timeout):
                await self._lock.acquire()
                acquired = True
        except TimeoutError:
            if self._logger is not None:
                self._logger.warning("database closing with a transaction still open")
        finally:
            self._conn = None
            self._state = "closed"
            conn.close()
            if acquired:
                self._lock.release()

    def _unavailable(self) -> ServiceUnavailable:
        state = "not connected (call connect() first)" if self._state == "new" else "closed"
        return ServiceUnavailable(
            f"database :memory: is {state}",
            code=ErrorCode.DATABASE_UNAVAILABLE,
            details={"reason": "closed" if self._state != "new" else "not_connected"},
        )

    def _open_connection(self) -> _Connection:
        if self._conn is None:
            raise self._unavailable()
        return self._conn

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[_Connection]:
        if self._state != "open":
            raise self._unavailable()
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            raise InternalServerError(
                "SqliteDatabase: this task holds an open transaction; run the statement "
                "through the transaction object (the fake serializes transactions, so "
                "waiting here would deadlock)"
            )
        try:
            async with asyncio.timeout(self.lock_timeout):
                await self._lock.acquire()
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"no database connection became free within {self.lock_timeout:g} s "
                "(a transaction holds the SqliteDatabase)",
                code=ErrorCode.DATABASE_UNAVAILABLE,
                details={"reason": "pool_timeout"},
            ) from exc
        try:
            yield self._open_connection()
        finally:
            self._lock.release()

    # --- Queryable (autocommit) ------------------------------------------------------

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._locked() as conn:
            return _rowcount(*_run(conn, sql, params))

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        async with self._locked() as conn:
            rows = _rows(*_run(conn, sql, params))
        return rows[0] if rows else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._locked() as conn:
            return _rows(*_run(conn, sql, params))

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        async with self._locked() as conn:
            cur, rows = _run(conn, sql, params)
        _require_result(cur)
        return rows[0][0] if rows else None

    # --- transactions ----------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``BEGIN`` holding the lock; ``COMMIT`` on normal exit, else ``ROLLBACK``."""
        async with self._locked() as conn:
            self._owner = asyncio.current_task()
            try:
                conn.execute("BEGIN")
                state = _TxState()
                with self._frame(state, "ROLLBACK", "COMMIT") as tx:
                    yield tx
            finally:
                self._owner = None

    @asynccontextmanager
    async def _savepoint(self, state: _TxState) -> AsyncIterator[Transaction]:
        name = f"hx_sp_{state.depth + 1}"
        self._open_connection().execute(f"SAVEPOINT {name}")
        state.depth += 1
        try:
            with self._frame(
                state, f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}", f"RELEASE {name}"
            ) as tx:
                yield tx
        finally:
            state.depth -= 1

    @contextlib.contextmanager
    def _frame(self, state: _TxState, rollback: str, commit: str) -> Iterator[Transaction]:
        tx = _SqliteTransaction(self, state)
        try:
            yield tx
        except BaseException:
            tx._active = False
            self._finish(rollback)
            state.aborted = False
            raise
        tx._active = False
        if state.aborted:
            self._finish(rollback)
            state.aborted = False
            raise InternalServerError(
                "transaction rolled back: a statement in it failed and the block still "
                "exited normally (catch errors outside a savepoint block)",
                details={"reason": "aborted_transaction"},
            )
        conn = self._open_connection()
        try:
            conn.execute(commit)
        except sqlite3.Error as exc:
            foreign_key = None
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_FOREIGNKEY":
                foreign_key = _trace_foreign_key(conn, "", ())
            self._finish(rollback)
            raise _map_error(exc, conn.schema, foreign_key) from exc

    def _finish(self, statements: str) -> None:
        """Run rollback statements; a closed database has nothing left to roll back."""
        conn = self._conn
        if conn is None:
            return
        for statement in statements.split("; "):
            conn.execute(statement)
