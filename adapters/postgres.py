"""PostgreSQL adapter for :class:`ports.database.Database` on psycopg 3 and psycopg_pool.

Build it with :meth:`PostgresDatabase.from_config` (or from a :class:`PostgresSettings`);
the constructor does no I/O. ``await db.connect()`` opens the pool.

Behaviour, beyond the port's contract:

- **Autocommit pool.** Every pooled connection is in autocommit mode, so a single
  statement on the Database costs one round trip (no ``BEGIN``/``COMMIT``).
  :meth:`PostgresDatabase.transaction` opens an explicit transaction block
  (``BEGIN`` ... ``COMMIT``/``ROLLBACK``); a transaction's own ``transaction()`` is a
  ``SAVEPOINT``. Rows are dicts. Statements run often on a connection are prepared
  server-side after ``DB_PREPARE_THRESHOLD`` uses (psycopg's automatic preparation).
- **Connect.** ``connect()`` probes the server with one connection, retrying with
  exponential backoff (tenacity, ``DB_CONNECT_RETRIES`` attempts, on the injected
  clock), then fills the pool to ``DB_POOL_MIN_SIZE``. A server that never answers
  gives ``ServiceUnavailable`` naming host, port and database, never the password.
- **Admission gate.** In front of the pool, a FIFO gate the size of
  ``DB_POOL_MAX_SIZE`` lets only that many callers at a time ask psycopg_pool for a
  connection; the others wait in line at the gate (one future each), which is much
  cheaper than psycopg_pool's waiter machinery under thousands of concurrent tasks.
  The wait at the gate counts toward ``DB_POOL_TIMEOUT_S`` (then ``ServiceUnavailable``,
  ``reason="pool_timeout"``); a caller cancelled in line, or after being admitted,
  passes its place on, so nothing is lost and nobody is left waiting.
- **Checked connections.** ``DB_POOL_CHECK=fast`` (default) checks each connection as it
  leaves the pool without a round trip: libpq must hold it healthy, and an idle
  autocommit connection's socket has nothing to read, so a readable socket (a server
  shutdown message, an EOF) triggers a real round trip (psycopg's
  ``AsyncConnectionPool.check_connection``), and a dead connection is closed and
  replaced instead of being handed out; the caller gets the next one at once, within
  the pool timeout. The socket poll is skipped for a connection returned alive less
  than 2 ms earlier (busy pools reuse connections within microseconds; a restart
  takes far longer, so every connection it killed is polled). ``query`` always does
  the round trip (one extra per call); ``none`` does not check (a restart then fails
  the first call on each stale connection). The pool retries lost connections in the background
  (1 s, then 2 s...) and gives up after 2 s; the next waiting caller starts over, so
  the pool serves again about a second after the server is back.
- **Slow queries** (``DB_SLOW_QUERY_MS``, 500 ms) are logged at warning with the SQL
  text and the duration, never the parameters. ``DB_STATEMENT_TIMEOUT_MS`` sets the
  server's ``statement_timeout``; a statement that exceeds it raises
  ``ServiceUnavailable`` (``details["reason"] == "statement_timeout"``; a statement
  cancelled by ``close()`` gives ``"canceled"``).
- **Errors** (driver error kept as ``__cause__``; messages never carry parameter
  values, SQL or the password):

  - unique (23505), foreign-key (23503) and exclusion (23P01) violations, and
    serialization failures / deadlocks (class 40: retry the transaction) -> ``Conflict``;
  - connection lost or refused, server shutting down (class 08, 57), out of resources
    (class 53), statement or lock timeout (57014, 55P03), system errors (class 58),
    pool timeout or pool closed -> ``ServiceUnavailable``;
  - anything else (syntax, undefined table, bad value, not-null or check violation,
    wrong number of parameters...) -> ``InternalServerError``.
- **Aborted transactions.** After a statement in a transaction fails, PostgreSQL
  refuses further statements until a rollback. Leaving a ``transaction()`` (or
  savepoint) block normally in that state rolls it back and raises
  ``InternalServerError`` instead of committing: psycopg would send ``COMMIT``, which the
  server silently turns into a ``ROLLBACK``. Catch errors *outside* a savepoint block to
  carry on.
- **Close.** ``close(timeout)`` refuses new work, waits up to ``timeout`` for calls and
  transactions in flight, then cancels what still runs, closes every connection and
  returns. It is idempotent.

Settings keys (read through :class:`ports.config.ConfigSource`):
``DATABASE_URL`` (required), ``DB_POOL_MIN_SIZE`` 5, ``DB_POOL_MAX_SIZE`` 25,
``DB_POOL_MAX_LIFETIME_S`` 300, ``DB_POOL_MAX_IDLE_S`` 60, ``DB_POOL_TIMEOUT_S`` 5,
``DB_POOL_CHECK`` fast, ``DB_CONNECT_RETRIES`` 5, ``DB_CONNECT_BACKOFF_S`` 0.5,
``DB_CONNECT_TIMEOUT_S`` 5, ``DB_SLOW_QUERY_MS`` 500, ``DB_STATEMENT_TIMEOUT_MS`` (unset: no
limit), ``DB_HEALTH_TIMEOUT_S`` 2, ``DB_PREPARE_THRESHOLD`` 5 (negative: never prepare),
``DB_APPLICATION_NAME`` (default ``SERVICE_NAME``, else ``hexinfra``).

Every number is checked when the settings are built (ADR 0025): finite, in range,
``DB_POOL_MIN_SIZE`` <= ``DB_POOL_MAX_SIZE`` (0..1000 and 1..1000),
``DB_CONNECT_RETRIES`` 1..100 (attempts), timeouts (``DB_POOL_TIMEOUT_S``,
``DB_CONNECT_TIMEOUT_S``, ``DB_HEALTH_TIMEOUT_S``) > 0 and <= 3600, pool lifetimes > 0 and
<= 86400, ``DB_CONNECT_BACKOFF_S`` 0..60, ``DB_SLOW_QUERY_MS`` 0..3600000,
``DB_STATEMENT_TIMEOUT_MS`` 0 (no limit) or 1..86400000, ``DB_PREPARE_THRESHOLD`` at most
1000000. A value out of range is a ``ConfigurationError`` naming the key and the range,
never the value.
"""

from __future__ import annotations

from adapters._extras import require_extra

require_extra("postgres", "adapters.postgres (PostgresDatabase)")

import asyncio
import collections
import contextlib
import re
import select
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Literal, NoReturn, cast

import attrs
import psycopg
from psycopg import AsyncConnection, pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from domain_errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    DomainError,
    ErrorCode,
    InternalServerError,
    ServiceUnavailable,
)
from ports.clock import Clock, SystemClock
from ports.config import ConfigSource
from ports.database import Params, Row, Transaction
from ports.logger import REDACTED, Logger

from ._config_base import DAY, HOUR, MINUTE, NumberRule, check_number
from .redaction import redact_error_text, redact_text, safe_str

__all__ = ["PostgresSettings", "PostgresDatabase", "PoolCheck", "redact_url"]

PoolCheck = Literal["fast", "query", "none"]
"""How a connection is checked as it leaves the pool (see the module docstring)."""

_POOL_CHECKS: Final = ("fast", "query", "none")
_RECONNECT_TIMEOUT: Final = 2.0
"""How long one of psycopg_pool's background reconnection attempts keeps retrying (it
backs off 1 s, 2 s, 4 s... up to this) before giving up; the next caller that has to
wait starts a fresh attempt. psycopg's default (300 s) lets the backoff grow so long
that callers time out well after the server is back."""
_SQL_LOG_LIMIT: Final = 2000

redact_url: Final = redact_text
"""``url`` with its password and any secret parameter hidden: the one redaction
(:func:`adapters.redaction.redact_text`, ADR 0026), kept under this name for importers."""
_PORTS: Final = re.compile(r"[0-9,]*")


def _where_of(info: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``host:port/dbname`` for messages and log lines, from libpq's parse of the URL:
    only those three, and ``?`` for one that a password with an unencoded ``@`` or
    ``/`` has spilled into (libpq then reads part of it as the host, port or dbname);
    and the texts so hidden (to hide them in driver errors too)."""
    host = str(info.get("host") or "localhost")
    port = str(info.get("port") or 5432)
    dbname = str(info.get("dbname") or info.get("user") or "")
    spilled = []
    if "@" in host:
        spilled.append(host)
        host = "?"
    if _PORTS.fullmatch(port) is None:
        spilled.append(port)
        port = "?"
    if "@" in dbname or "/" in dbname:
        spilled.append(dbname)
        dbname = "?"
    return f"{host}:{port}/{dbname}", spilled


_TIMEOUT: Final = NumberRule(0, HOUR, low_open=True)
_LIFETIME: Final = NumberRule(0, DAY, low_open=True)
_STATEMENT_TIMEOUT: Final = NumberRule(
    1, DAY * 1000, integer=True, special=(0,), note="0 (no limit)"
)
# The configuration key and the accepted values of each numeric field (ADR 0025).
_RULES: Final = {
    "pool_min_size": ("DB_POOL_MIN_SIZE", NumberRule(0, 1000, integer=True)),
    "pool_max_size": ("DB_POOL_MAX_SIZE", NumberRule(1, 1000, integer=True)),
    "max_lifetime": ("DB_POOL_MAX_LIFETIME_S", _LIFETIME),
    "max_idle": ("DB_POOL_MAX_IDLE_S", _LIFETIME),
    "pool_timeout": ("DB_POOL_TIMEOUT_S", _TIMEOUT),
    "connect_retries": ("DB_CONNECT_RETRIES", NumberRule(1, 100, integer=True)),
    "connect_backoff": ("DB_CONNECT_BACKOFF_S", NumberRule(0, MINUTE)),
    "connect_timeout": ("DB_CONNECT_TIMEOUT_S", _TIMEOUT),
    "slow_query_ms": ("DB_SLOW_QUERY_MS", NumberRule(0, HOUR * 1000, integer=True)),
    "statement_timeout_ms": ("DB_STATEMENT_TIMEOUT_MS", _STATEMENT_TIMEOUT),
    "health_timeout": ("DB_HEALTH_TIMEOUT_S", _TIMEOUT),
    "prepare_threshold": (
        "DB_PREPARE_THRESHOLD",
        NumberRule(0, 1_000_000, integer=True, note="negative (never prepare)"),
    ),
}


def _in_range(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None and attribute.name in ("statement_timeout_ms", "prepare_threshold"):
        return  # no limit / never prepare
    key, rule = _RULES[attribute.name]
    check_number(key, cast(float, value), rule, field=attribute.name)


def _check_url(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise ConfigurationError("url must not be empty (DATABASE_URL)")


def _check_pool_check(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in _POOL_CHECKS:
        raise ConfigurationError(f"pool_check must be one of {', '.join(_POOL_CHECKS)}")


@attrs.frozen(kw_only=True)
class PostgresSettings:
    """Settings of a :class:`PostgresDatabase`; times in seconds unless named ``_ms``.

    ``url`` is a libpq URL or ``key=value`` string; its ``repr`` hides the password.
    ``statement_timeout_ms=None`` means no limit; ``prepare_threshold=None`` never
    prepares statements server-side (needed behind PgBouncer in transaction mode).
    """

    url: str = attrs.field(repr=lambda url: repr(redact_url(url)), validator=_check_url)
    pool_min_size: int = attrs.field(default=5, validator=_in_range)
    pool_max_size: int = attrs.field(default=25, validator=_in_range)
    max_lifetime: float = attrs.field(default=300.0, validator=_in_range)
    max_idle: float = attrs.field(default=60.0, validator=_in_range)
    pool_timeout: float = attrs.field(default=5.0, validator=_in_range)
    pool_check: PoolCheck = attrs.field(default="fast", validator=_check_pool_check)
    connect_retries: int = attrs.field(default=5, validator=_in_range)
    connect_backoff: float = attrs.field(default=0.5, validator=_in_range)
    connect_timeout: float = attrs.field(default=5.0, validator=_in_range)
    slow_query_ms: int = attrs.field(default=500, validator=_in_range)
    statement_timeout_ms: int | None = attrs.field(default=None, validator=_in_range)
    health_timeout: float = attrs.field(default=2.0, validator=_in_range)
    prepare_threshold: int | None = attrs.field(default=5, validator=_in_range)
    application_name: str = "hexinfra"

    def __attrs_post_init__(self) -> None:
        if self.pool_min_size > self.pool_max_size:
            raise ConfigurationError(
                "setting DB_POOL_MIN_SIZE (pool_min_size) must not exceed DB_POOL_MAX_SIZE "
                "(pool_max_size)",
                details={"key": "DB_POOL_MIN_SIZE"},
            )
        if self.statement_timeout_ms == 0:
            raise ConfigurationError(
                "statement_timeout_ms must be > 0, or None for no limit "
                "(DB_STATEMENT_TIMEOUT_MS: 0 or unset)",
                details={"key": "DB_STATEMENT_TIMEOUT_MS"},
            )

    @classmethod
    def from_config(cls, config: ConfigSource) -> PostgresSettings:
        """Read the settings from ``config`` (keys in the module docstring)."""
        statement_timeout = config.get_int("DB_STATEMENT_TIMEOUT_MS", 0)
        check_number("DB_STATEMENT_TIMEOUT_MS", statement_timeout, _STATEMENT_TIMEOUT)
        prepare_threshold = config.get_int("DB_PREPARE_THRESHOLD", 5)
        check = config.get_str("DB_POOL_CHECK", "fast").strip().lower()
        if check not in _POOL_CHECKS:
            raise ConfigurationError(
                f"DB_POOL_CHECK must be one of {', '.join(_POOL_CHECKS)}",
                details={"key": "DB_POOL_CHECK"},
            )
        app_name = config.get_str("DB_APPLICATION_NAME", config.get_str("SERVICE_NAME", ""))
        return cls(
            url=config.get_str("DATABASE_URL"),
            pool_min_size=config.get_int("DB_POOL_MIN_SIZE", 5),
            pool_max_size=config.get_int("DB_POOL_MAX_SIZE", 25),
            max_lifetime=config.get_float("DB_POOL_MAX_LIFETIME_S", 300.0),
            max_idle=config.get_float("DB_POOL_MAX_IDLE_S", 60.0),
            pool_timeout=config.get_float("DB_POOL_TIMEOUT_S", 5.0),
            pool_check=cast(PoolCheck, check),
            connect_retries=config.get_int("DB_CONNECT_RETRIES", 5),
            connect_backoff=config.get_float("DB_CONNECT_BACKOFF_S", 0.5),
            connect_timeout=config.get_float("DB_CONNECT_TIMEOUT_S", 5.0),
            slow_query_ms=config.get_int("DB_SLOW_QUERY_MS", 500),
            statement_timeout_ms=statement_timeout or None,
            health_timeout=config.get_float("DB_HEALTH_TIMEOUT_S", 2.0),
            prepare_threshold=prepare_threshold if prepare_threshold >= 0 else None,
            application_name=app_name or "hexinfra",
        )


# --- error mapping -------------------------------------------------------------------

_CONFLICT_STATES: Final = {
    "23505": ("unique", ErrorCode.DUPLICATE),
    "23503": ("foreign_key", ErrorCode.CONFLICT),
    "23P01": ("exclusion", ErrorCode.CONFLICT),
}
_UNAVAILABLE_CLASSES: Final = ("08", "53", "57", "58")
_TIMEOUT_STATES: Final = {"57014": "statement_timeout", "55P03": "lock_timeout"}


_CONFLICT_MESSAGES: Final = {
    "unique": "the record conflicts with an existing one (a duplicate value)",
    "foreign_key": "the change breaks a reference between records",
    "exclusion": "the record conflicts with an existing one",
}
# From the first quote to the last: PostgreSQL does not escape quotes inside a value.
_QUOTED: Final = re.compile(r'"[^\n]*"')
# The names the server reports beside a message (details key, diag attribute).
_NAME_FIELDS: Final = (
    ("constraint", "constraint_name"),
    ("table", "table_name"),
    ("column", "column_name"),
    ("datatype", "datatype_name"),
)
# PL/pgSQL RAISE and ASSERT: the message is whatever the function wrote.
_USER_RAISED: Final = ("P0001", "P0004")


def _operator_details(diag: Any, sqlstate: str) -> dict[str, str]:
    """SQLSTATE and the names (constraint, table, column, type) the server reported:
    for operators' logs, never a client body (``public_details=False``)."""
    details = {"sqlstate": sqlstate}
    for key, field in _NAME_FIELDS:
        value = getattr(diag, field, None)
        if value:
            details[key] = str(value)
    return details


def _withhold_row_values(exc: Exception, sqlstate: str) -> None:
    """Rewrite ``exc``'s message (what ``str()`` and every rendered stack show) without
    the row and parameter values PostgreSQL quotes: the ``DETAIL`` (``Failing row
    contains (...)``, ``Key (email)=(...)``) and ``CONTEXT`` (``unnamed portal
    parameter $1 = '...'``) lines are dropped, and the quoted text of the primary
    message is replaced, whatever the SQLSTATE (``invalid input syntax for type bigint:
    "..."``, ``syntax error in tsquery: "..."``, ``relation "..." does not exist`` when
    a parameter was used as a name), unless every quoted text is a name ``diag``
    reports (constraint, table, column, type: those are also in the domain
    error's ``details``). A message raised by PL/pgSQL (``RAISE``: P0001, ``ASSERT``: P0004)
    may carry anything and is dropped whole. The SQLSTATE is added; ``exc.diag`` keeps
    the server's full report for a debugger. ADR 0026."""
    if sqlstate in _USER_RAISED:
        text = f"raised by PL/pgSQL, message withheld (SQLSTATE {sqlstate})"
    else:
        diag = getattr(exc, "diag", None)
        primary = str(getattr(diag, "message_primary", None) or "")
        if not primary:
            primary = safe_str(exc).split("\n", 1)[0]
        parts = primary.split('"')
        names = {str(getattr(diag, field, None) or "") for _, field in _NAME_FIELDS}
        if len(parts) % 2 == 0 or any(part not in names for part in parts[1::2]):
            primary = _QUOTED.sub(f'"{REDACTED}"', primary)  # not only names quoted
        text = f"{redact_error_text(primary)} (SQLSTATE {sqlstate}; row values withheld)"
    with contextlib.suppress(Exception):
        exc.args = (text,)


def _map_error(exc: Exception, where: str) -> DomainError:
    """The domain error for a driver error (the caller chains ``exc`` as cause).

    Row values never leave: the domain error's message names no value, table or
    constraint; its details (SQLSTATE, constraint, table, column) are for operators
    (``public_details=False``); and the driver error's own message is rewritten
    without the values PostgreSQL quotes (:func:`_withhold_row_values`).
    """
    if isinstance(exc, PoolTimeout):
        return ServiceUnavailable(
            f"no database connection to {where} became free in time",
            code=ErrorCode.DATABASE_UNAVAILABLE,
            details={"reason": "pool_timeout"},
        )
    if isinstance(exc, PoolClosed):
        return ServiceUnavailable(
            f"the connection pool to {where} is closed",
            code=ErrorCode.DATABASE_UNAVAILABLE,
            details={"reason": "closed"},
        )
    sqlstate: str | None = getattr(exc, "sqlstate", None)
    name = type(exc).__name__
    if sqlstate is not None:
        diag = getattr(exc, "diag", None)
        _withhold_row_values(exc, sqlstate)
        if sqlstate in _CONFLICT_STATES:
            kind, code = _CONFLICT_STATES[sqlstate]
            details = {"constraint": "?", "table": "?", **_operator_details(diag, sqlstate)}
            return Conflict(
                _CONFLICT_MESSAGES[kind], code=code, details=details, public_details=False
            )
        if sqlstate.startswith("40"):
            return Conflict(
                f"transaction conflicted with a concurrent one ({name}); retry it",
                details={"sqlstate": sqlstate, "reason": "transaction_conflict"},
                public_details=False,
            )
        if sqlstate in _TIMEOUT_STATES:
            reason = _TIMEOUT_STATES[sqlstate]
            primary = cast(psycopg.Error, exc).diag.message_primary or ""
            if sqlstate == "57014" and "timeout" not in primary:
                reason = "canceled"
            return ServiceUnavailable(
                f"database {where} did not complete the statement in time ({reason})",
                code=ErrorCode.DATABASE_UNAVAILABLE,
                details={"reason": reason, "sqlstate": sqlstate},
            )
        if sqlstate[:2] in _UNAVAILABLE_CLASSES:
            return ServiceUnavailable(
                f"database {where} unavailable ({name})",
                code=ErrorCode.DATABASE_UNAVAILABLE,
                details={"reason": "server", "sqlstate": sqlstate},
            )
        return InternalServerError(
            f"database error {name} (SQLSTATE {sqlstate})",
            details=_operator_details(diag, sqlstate),
            public_details=False,
        )
    if isinstance(exc, psycopg.OperationalError):
        # Client-side: connection refused, lost, closed, or a failed connection check.
        return ServiceUnavailable(
            f"database {where} unavailable: connection lost or refused",
            code=ErrorCode.DATABASE_UNAVAILABLE,
            details={"reason": "connection"},
        )
    if isinstance(exc, TypeError):
        # psycopg's parameter-shape errors name types and placeholder styles, no values.
        return InternalServerError(f"invalid query parameters: {exc}")
    return InternalServerError(f"database error {name}")


def _invalid_text(params: Params) -> BadRequest | None:
    """``BadRequest`` naming the first text parameter PostgreSQL cannot take (a lone
    surrogate is not UTF-8; text cannot hold NUL), never its value; else ``None``."""
    if isinstance(params, Mapping):
        items: Any = params.items()
    elif isinstance(params, Sequence) and not isinstance(params, str | bytes):
        items = enumerate(params, 1)
    else:
        return None
    for where, value in items:
        if not isinstance(value, str):
            continue
        try:
            value.encode()
        except UnicodeEncodeError:
            reason = "it is not valid Unicode text (a lone surrogate)"
        else:
            if "\x00" not in value:
                continue
            reason = "PostgreSQL text cannot contain NUL (0x00) characters"
        label = f"%({where})s" if isinstance(where, str) else f"${where}"
        return BadRequest(
            f"query parameter {label} is not valid text: {reason}",
            details={"parameter": where},
        )
    return None


def _raise_statement_error(exc: Exception, where: str, params: Params) -> NoReturn:
    """psycopg raises UnicodeEncodeError (lone surrogate) or a client-side DataError
    (NUL) while sending a text parameter: that is the caller's ``BadRequest``, raised
    without the driver's error, which quotes the text."""
    invalid = _invalid_text(params)
    if invalid is not None:
        raise invalid from None
    raise _map_error(exc, where) from exc


# --- connection checks ---------------------------------------------------------------

_DictConn = AsyncConnection[DictRow]
_Check = Callable[[_DictConn], Awaitable[None]]


_CHECK_IDLE_AFTER: Final = 0.002
"""A connection back in the pool for less than this (seconds) was seen alive so recently
that the ``fast`` check skips its socket poll (see :meth:`PostgresDatabase._getconn`)."""
_POLL_EVENTS: Final = select.POLLIN | select.POLLERR | select.POLLHUP
_CONN_OK: Final = pq.ConnStatus.OK
_TX_IDLE: Final = pq.TransactionStatus.IDLE


async def _fast_check(conn: _DictConn) -> None:
    """A round trip only if the idle socket has something to say (raises if dead)."""
    if conn.pgconn.status != _CONN_OK:
        raise psycopg.OperationalError("the connection is broken")
    poller = select.poll()
    poller.register(conn.pgconn.socket, _POLL_EVENTS)
    if poller.poll(0):
        await AsyncConnectionPool.check_connection(conn)


async def _query_check(conn: _DictConn) -> None:
    """psycopg's check: a round trip (an empty query) every time (raises if dead)."""
    await AsyncConnectionPool.check_connection(conn)


class _Gate:
    """FIFO admission in front of the pool: at most ``size`` callers hold a permit.

    Under heavy concurrency psycopg_pool queues every caller it cannot serve in its own
    waiter machinery (a lock, a condition and a wake-up per waiter); the gate keeps all
    but ``size`` (the pool's max size) callers here, where a wait is one future and a
    freed permit passes straight to the oldest waiter. A wait ends with ``PoolTimeout``
    after ``timeout`` s. A waiter cancelled after a permit was handed to it passes the
    permit on, so cancellation never loses one; cancelled or timed-out waiters are
    skipped when a permit is released.
    """

    __slots__ = ("_free", "_waiters", "waiting")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.waiting = 0
        """Callers waiting for a permit."""

    def try_acquire(self) -> bool:
        """Take a permit if one is free (then nobody waits: a release hands permits on)."""
        if self._free:
            self._free -= 1
            return True
        return False

    async def acquire(self, timeout: float) -> None:
        """Wait in line for a permit; ``PoolTimeout`` after ``timeout`` s."""
        if self.try_acquire():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        self.waiting += 1
        timer = loop.call_later(timeout, _expire, fut, timeout)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # handed a permit, then cancelled: pass it on
            elif not fut.done():
                fut.cancel()
            raise
        finally:
            self.waiting -= 1
            timer.cancel()

    def release(self) -> None:
        """Give the permit to the oldest live waiter, else free it."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


def _expire(fut: asyncio.Future[None], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec"))


# --- the adapter ---------------------------------------------------------------------


class _PgTransaction:
    """A :class:`ports.database.Transaction` on one pooled connection."""

    __slots__ = ("_conn", "_db")

    def __init__(self, db: PostgresDatabase, conn: _DictConn) -> None:
        self._db = db
        self._conn: _DictConn | None = conn

    def _live(self) -> _DictConn:
        if self._conn is None:
            raise InternalServerError("transaction used after its block ended")
        return self._conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._db._execute_on(self._live(), sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        return await self._db._fetch_one_on(self._live(), sql, params)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._db._fetch_all_on(self._live(), sql, params)

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        return await self._db._fetch_value_on(self._live(), sql, params)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._db._block(self._live())

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "finished"
        return f"<PostgresDatabase transaction {state}>"


class PostgresDatabase:
    """:class:`ports.database.Database` on a psycopg ``AsyncConnectionPool``.

    Safe to share between tasks; a :class:`~ports.database.Transaction` it yields
    belongs to the task that opened it. See the module docstring for connection
    checks, slow-query logging, timeouts and the error mapping.
    """

    def __init__(
        self, settings: PostgresSettings, logger: Logger, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self._logger = logger
        self._clock: Clock = clock if clock is not None else SystemClock()
        try:
            info = conninfo_to_dict(settings.url)
        except psycopg.ProgrammingError:
            raise ConfigurationError(
                "url (DATABASE_URL) is not a valid PostgreSQL URL or conninfo string",
                details={"key": "DATABASE_URL"},
            ) from None
        self._where, spilled = _where_of(info)
        # Texts a driver error may quote that hold (part of) the password.
        self._hidden = [text for text in (str(info.get("password") or ""), *spilled) if text]
        options = str(info.get("options") or "")
        if settings.statement_timeout_ms is not None:
            options = f"{options} -c statement_timeout={settings.statement_timeout_ms}".strip()
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "prepare_threshold": settings.prepare_threshold,
            "application_name": settings.application_name,
        }
        if options:
            self._kwargs["options"] = options
        self._slow_s = settings.slow_query_ms / 1000.0
        self._monotonic = self._clock.monotonic
        self._pool: AsyncConnectionPool[_DictConn] | None = None
        self._state: Literal["new", "open", "closing", "closed"] = "new"
        self._in_flight = 0
        self._in_use: set[_DictConn] = set()
        self._check: _Check | None = {"fast": _fast_check, "query": _query_check}.get(
            settings.pool_check
        )
        self._fast = settings.pool_check == "fast"
        self._pollers: dict[int, select.poll] = {}
        self._returned_at: dict[int, float] = {}
        self._gate = _Gate(settings.pool_max_size)
        self._spare: list[_DictConn] = []
        # When each connection we have seen is due for replacement: max_lifetime from
        # the first time we took it, a little after psycopg_pool's own (jittered) date,
        # which it keeps in a private attribute we do not read.
        self._expiry: weakref.WeakKeyDictionary[_DictConn, float] = weakref.WeakKeyDictionary()
        """Connections taken from the pool, idle here between two callers under load."""
        self._checks_failed = 0
        self._idle = asyncio.Event()
        self._closed = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._idle.set()

    @classmethod
    def from_config(
        cls, config: ConfigSource, *, logger: Logger, clock: Clock | None = None
    ) -> PostgresDatabase:
        """A database built from ``config`` (see :meth:`PostgresSettings.from_config`)."""
        return cls(PostgresSettings.from_config(config), logger, clock)

    def __repr__(self) -> str:
        return f"PostgresDatabase({self._where}, {self._state})"

    # --- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        """Probe the server (with retries and backoff), then open and fill the pool.

        Idempotent once connected (concurrent calls share one attempt). Raises
        ``ServiceUnavailable`` if the server does not accept a connection after
        ``connect_retries`` attempts.
        """
        async with self._connect_lock:
            await self._connect()

    async def _connect(self) -> None:
        if self._state == "open":
            return
        if self._state != "new":
            raise ServiceUnavailable(
                f"database {self._where} was closed; build a new PostgresDatabase",
                code=ErrorCode.DATABASE_UNAVAILABLE,
                details={"reason": "closed"},
            )
        s = self.settings
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.connect_retries),
            wait=wait_exponential(multiplier=s.connect_backoff, max=max(s.connect_backoff, 1) * 16)
            + wait_random(0, s.connect_backoff / 4),
            sleep=self._clock.sleep,
            retry=retry_if_exception_type(psycopg.OperationalError),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    probe = await AsyncConnection.connect(
                        s.url, connect_timeout=max(1, round(s.connect_timeout)), **self._kwargs
                    )
                    await probe.close()
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(
                f"PostgreSQL at {self._where} did not accept a connection after "
                f"{attempts} attempts: {self._reason(exc)}",
                code=ErrorCode.DATABASE_UNAVAILABLE,
                details={"reason": "connect", "attempts": attempts},
            ) from exc

        pool: AsyncConnectionPool[_DictConn] = AsyncConnectionPool(
            s.url,
            connection_class=_DictConn,
            kwargs=self._kwargs,
            min_size=s.pool_min_size,
            max_size=s.pool_max_size,
            open=False,
            name=f"hexinfra-{s.application_name}",
            timeout=s.pool_timeout,
            max_lifetime=s.max_lifetime,
            max_idle=s.max_idle,
            reconnect_timeout=_RECONNECT_TIMEOUT,
        )
        try:
            await pool.open(wait=True, timeout=s.connect_timeout + s.pool_timeout)
        except PoolTimeout as exc:  # the pool has closed itself
            raise ServiceUnavailable(
                f"PostgreSQL at {self._where} accepted a probe but the pool could not open "
                f"{s.pool_min_size} connections in time",
                code=ErrorCode.DATABASE_UNAVAILABLE,
                details={"reason": "connect"},
            ) from exc
        except BaseException:  # cancelled while filling: stop the pool's workers
            await asyncio.shield(pool.close())
            raise
        self._pool = pool
        self._state = "open"
        self._logger.info(
            "database connected",
            database=self._where,
            pool_min_size=s.pool_min_size,
            pool_max_size=s.pool_max_size,
            attempts=attempts,
        )

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        self._logger.warning(
            "database not reachable, retrying",
            database=self._where,
            attempt=state.attempt_number,
            of=self.settings.connect_retries,
            retry_in_s=round(delay, 3),
            reason=self._reason(exc) if exc is not None else "",
        )

    def _reason(self, exc: BaseException) -> str:
        """The first line of a driver error, without the password or the parts of the
        URL it spilled into (:func:`_where_of`). The error's own message is rewritten
        the same way: it is chained as the cause and rendered in logged stacks."""
        text = safe_str(exc)
        scrubbed = text
        for hidden in self._hidden:
            scrubbed = scrubbed.replace(hidden, REDACTED)
        if scrubbed != text:
            with contextlib.suppress(Exception):
                exc.args = (scrubbed,)
        first = scrubbed.strip().splitlines()[0] if scrubbed.strip() else type(exc).__name__
        return redact_text(first)[:300]

    def pool_usage(self) -> tuple[int, int]:
        """``(in_use, waiting)``: connections held by callers and callers waiting for
        one (the admission gate's counts; both 0 when idle). Read by the
        ``hexinfra.db.pool.*`` gauges of ``adapters.telemetry.TracedDatabase``."""
        gate = self._gate
        return self.settings.pool_max_size - gate._free, gate.waiting

    async def health_check(self) -> None:
        """``SELECT 1`` within ``health_timeout``; ``ServiceUnavailable`` otherwise."""
        timeout = self.settings.health_timeout
        try:
            async with asyncio.timeout(timeout):
                await self.fetch_value("SELECT 1")
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"database {self._where} did not answer SELECT 1 within {timeout:g} s",
                code=ErrorCode.DATABASE_UNAVAILABLE,
                details={"reason": "health_timeout"},
            ) from exc

    async def close(self, timeout: float = 5.0) -> None:
        """Refuse new work, let in-flight work finish for ``timeout`` s, then close."""
        if self._state == "new":
            self._state = "closed"
            self._closed.set()
            return
        if self._state != "open":
            await self._closed.wait()
            return
        self._state = "closing"
        pool = self._pool
        assert pool is not None
        try:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                await self._interrupt_in_flight()
            await self._return_spares()
            await pool.close(timeout=max(0.1, min(timeout, 5.0)))
        finally:
            self._state = "closed"
            self._closed.set()
            self._logger.info("database closed", database=self._where)

    async def _interrupt_in_flight(self) -> None:
        self._logger.warning(
            "database closing with work still in flight after the timeout",
            database=self._where,
            in_flight=self._in_flight,
        )
        for conn in list(self._in_use):
            with contextlib.suppress(Exception):
                if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                    # A task is waiting on this socket: cancel its query rather than
                    # closing the socket under it; it returns the connection itself.
                    await conn.cancel_safe(timeout=2.0)
                else:
                    await conn.close()

    # --- pool access -----------------------------------------------------------------

    def pool_stats(self) -> dict[str, int]:
        """psycopg_pool's figures (``pool_size``, ``pool_available``, ``requests_*``...)
        plus ``in_flight`` (calls and transactions holding or awaiting a connection),
        ``admission_waiting`` (callers queued at the admission gate, also counted in
        ``requests_waiting``) and ``checks_failed`` (dead connections caught by the
        check, never handed out)."""
        stats = self._pool.get_stats() if self._pool is not None else {}
        if self._pool is not None:
            waiting = self._gate.waiting
            stats["admission_waiting"] = waiting
            stats["spare"] = len(self._spare)
            stats["requests_waiting"] = stats.get("requests_waiting", 0) + waiting
        stats["in_flight"] = self._in_flight
        stats["checks_failed"] = self._checks_failed
        return stats

    def _unavailable(self) -> ServiceUnavailable:
        state = "not connected (call connect() first)" if self._state == "new" else "closed"
        return ServiceUnavailable(
            f"database {self._where} is {state}",
            code=ErrorCode.DATABASE_UNAVAILABLE,
            details={"reason": "closed" if self._state != "new" else "not_connected"},
        )

    async def _getconn(self) -> _DictConn:
        pool = self._pool
        if self._state != "open" or pool is None:
            raise self._unavailable()
        self._in_flight += 1
        self._idle.clear()
        gate = self._gate
        timeout = self.settings.pool_timeout
        deadline = time.monotonic() + timeout
        admitted = gate.try_acquire()
        try:
            if not admitted:
                await gate.acquire(timeout)
                admitted = True
            conn = self._take_spare()
            if conn is not None and self._expiry.get(conn, 0.0) <= time.monotonic():
                await asyncio.shield(pool.putconn(conn))  # the pool closes and replaces it
                conn = None
            if conn is None:
                conn = await pool.getconn(max(deadline - time.monotonic(), 0.001))
            if self._check is not None and not self._glance(conn):
                conn = await self._checked(pool, conn, self._check, deadline)
            if conn not in self._expiry:
                self._expiry[conn] = time.monotonic() + self.settings.max_lifetime
        except psycopg.Error as exc:  # PoolTimeout (gate or pool), PoolClosed, a check
            if admitted:
                gate.release()
            self._done()
            raise _map_error(exc, self._where) from exc
        except BaseException:
            if admitted:
                gate.release()
            self._done()
            raise
        self._in_use.add(conn)
        return conn

    def _glance(self, conn: _DictConn) -> bool:
        try:
            return self._alive_at_a_glance(conn)
        except Exception:  # let the full check decide, and return the connection
            return False

    def _alive_at_a_glance(self, conn: _DictConn) -> bool:
        """The ``fast`` check without a round trip: True if ``conn`` may be handed out.

        libpq must consider the connection healthy; then, unless it came back to the
        pool less than ``_CHECK_IDLE_AFTER`` ago (alive then), its idle socket must have
        nothing to read: a server shutdown notice or an EOF makes it readable. False
        sends the connection through :meth:`_checked` (a round trip decides). ``query``
        mode always answers False.
        """
        if not self._fast:
            return False
        pgconn = conn.pgconn
        if pgconn.status != _CONN_OK:
            return False
        fd = pgconn.socket
        if time.monotonic() - self._returned_at.get(fd, 0.0) < _CHECK_IDLE_AFTER:
            return True
        poller = self._pollers.get(fd)
        if poller is None:  # one per descriptor number: a reused number polls the new socket
            poller = self._pollers[fd] = select.poll()
            poller.register(fd, _POLL_EVENTS)
        return not poller.poll(0)

    async def _checked(
        self,
        pool: AsyncConnectionPool[_DictConn],
        conn: _DictConn,
        check: _Check,
        deadline: float,
    ) -> _DictConn:
        """``conn`` if it passes ``check``; else discard it and take the next one.

        psycopg_pool's own ``check`` callback sleeps with backoff (1 s, 2 s...) after
        each failed check, so after a restart a caller would crawl through the dead
        idle connections one per second; here each dead one costs a few
        microseconds, all within the caller's pool timeout.
        """
        while True:
            try:
                await check(conn)
            except Exception:
                self._checks_failed += 1
                with contextlib.suppress(Exception):
                    await conn.close()  # closed: the pool discards and replaces it
                await pool.putconn(conn)
            except BaseException:
                await pool.putconn(conn)
                raise
            else:
                return conn
            conn = await pool.getconn(timeout=max(deadline - time.monotonic(), 0.001))

    def _take_spare(self) -> _DictConn | None:
        """The most recently returned spare connection, if any."""
        return self._spare.pop() if self._spare else None

    async def _putconn(self, conn: _DictConn) -> None:
        """Give ``conn`` back: to the spare list while other callers are in flight (the
        next one takes it without a trip through psycopg_pool; at most one spare per
        other caller in flight), else to the pool, with every spare once nobody else is
        in flight. A spare past its lifetime goes to the pool when next taken."""
        self._in_use.discard(conn)
        try:
            pgconn = conn.pgconn
            now = time.monotonic()
            healthy = pgconn.status == _CONN_OK
            if healthy and self._fast:  # seen alive now (see _alive_at_a_glance)
                self._returned_at[pgconn.socket] = now
            if (
                len(self._spare) < self._in_flight - 1
                and healthy
                and self._state == "open"
                and pgconn.transaction_status == _TX_IDLE
                and self._expiry.get(conn, 0.0) > now
            ):
                self._spare.append(conn)
                return
            pool = cast(AsyncConnectionPool[_DictConn], self._pool)
            await pool.putconn(conn)
            if self._in_flight == 1 and self._spare:
                await self._return_spares()
        finally:
            self._gate.release()
            self._done()

    async def _return_spares(self) -> None:
        """Every spare back to the pool, even if the caller is cancelled meanwhile."""
        pool = cast(AsyncConnectionPool[_DictConn], self._pool)
        conns = self._spare[:]
        self._spare.clear()

        async def return_all() -> None:
            for conn in conns:
                with contextlib.suppress(Exception):
                    await pool.putconn(conn)

        await asyncio.shield(return_all())

    def _done(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def _slow(self, sql: str, started: float) -> None:
        elapsed = self._monotonic() - started
        if elapsed >= self._slow_s:
            self._logger.warning(
                "slow query",
                sql=sql[:_SQL_LOG_LIMIT],
                duration_ms=round(elapsed * 1000.0, 1),
                threshold_ms=self.settings.slow_query_ms,
                database=self._where,
            )

    # --- statements on a given connection --------------------------------------------

    async def _execute_on(self, conn: _DictConn, sql: str, params: Params) -> int:
        started = self._monotonic()
        try:
            cur = await conn.execute(sql, params)
        except (UnicodeEncodeError, psycopg.DataError) as exc:
            _raise_statement_error(exc, self._where, params)
        except (psycopg.Error, TypeError) as exc:
            raise _map_error(exc, self._where) from exc
        finally:
            self._slow(sql, started)
        return cur.rowcount

    async def _fetch_one_on(self, conn: _DictConn, sql: str, params: Params) -> Row | None:
        started = self._monotonic()
        try:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()
        except (UnicodeEncodeError, psycopg.DataError) as exc:
            _raise_statement_error(exc, self._where, params)
        except (psycopg.Error, TypeError) as exc:
            raise _map_error(exc, self._where) from exc
        finally:
            self._slow(sql, started)

    async def _fetch_all_on(self, conn: _DictConn, sql: str, params: Params) -> list[Row]:
        started = self._monotonic()
        try:
            cur = await conn.execute(sql, params)
            return list(await cur.fetchall())
        except (UnicodeEncodeError, psycopg.DataError) as exc:
            _raise_statement_error(exc, self._where, params)
        except (psycopg.Error, TypeError) as exc:
            raise _map_error(exc, self._where) from exc
        finally:
            self._slow(sql, started)

    async def _fetch_value_on(self, conn: _DictConn, sql: str, params: Params) -> Any:
        started = self._monotonic()
        try:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(sql, params)
            row = await cur.fetchone()
        except (UnicodeEncodeError, psycopg.DataError) as exc:
            _raise_statement_error(exc, self._where, params)
        except (psycopg.Error, TypeError) as exc:
            raise _map_error(exc, self._where) from exc
        finally:
            self._slow(sql, started)
        return row[0] if row else None

    # --- Queryable on the pool (autocommit) ------------------------------------------

    async def execute(self, sql: str, params: Params = ()) -> int:
        conn = await self._getconn()
        try:
            return await self._execute_on(conn, sql, params)
        finally:
            await self._putconn(conn)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        conn = await self._getconn()
        try:
            return await self._fetch_one_on(conn, sql, params)
        finally:
            await self._putconn(conn)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        conn = await self._getconn()
        try:
            return await self._fetch_all_on(conn, sql, params)
        finally:
            await self._putconn(conn)

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        conn = await self._getconn()
        try:
            return await self._fetch_value_on(conn, sql, params)
        finally:
            await self._putconn(conn)

    # --- transactions ----------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``BEGIN`` on a pooled connection; ``COMMIT`` on normal exit, else ``ROLLBACK``."""
        conn = await self._getconn()
        try:
            async with self._block(conn) as tx:
                yield tx
        finally:
            await self._putconn(conn)

    @asynccontextmanager
    async def _block(self, conn: _DictConn) -> AsyncIterator[Transaction]:
        """A transaction block on ``conn``: ``BEGIN`` at top level, else a savepoint."""
        try:
            block = conn.transaction()
            await block.__aenter__()
        except psycopg.Error as exc:
            raise _map_error(exc, self._where) from exc
        tx = _PgTransaction(self, conn)
        try:
            yield tx
        except BaseException as exc:
            tx._conn = None
            await block.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        tx._conn = None
        if conn.pgconn.transaction_status == pq.TransactionStatus.INERROR:
            aborted = InternalServerError(
                "transaction rolled back: a statement in it failed and the block "
                "still exited normally (catch errors outside a savepoint block)",
                details={"reason": "aborted_transaction"},
            )
            await block.__aexit__(InternalServerError, aborted, None)
            raise aborted
        try:
            await block.__aexit__(None, None, None)
        except psycopg.Error as exc:
            raise _map_error(exc, self._where) from exc

    # --- notifications (LISTEN) ------------------------------------------------------

    async def notifications(self, channel: str) -> AsyncIterator[str]:
        """Payloads of ``NOTIFY channel`` (``pg_notify``) as they arrive, on a dedicated
        connection outside the pool (a LISTEN must not travel back into it).

        The connection is opened on the first iteration and closed when the iterator
        ends: its consumer cancelled, ``aclose()``, or this database closing. Raises
        ``ServiceUnavailable`` when the connection cannot be opened or is lost (a
        notification sent meanwhile is gone: poll once after reconnecting);
        ``BadRequest`` for a channel that is not a plain identifier.
        """
        from psycopg import sql as pg_sql

        if not isinstance(channel, str) or _CHANNEL.match(channel) is None:
            raise BadRequest(
                "notification channel must be 1-63 letters, digits or '_' (not starting "
                "with a digit)",
                details={"field": "channel"},
            )
        if self._state != "open":
            raise self._unavailable()
        try:
            conn = await AsyncConnection.connect(
                self.settings.url,
                connect_timeout=max(1, round(self.settings.connect_timeout)),
                **self._kwargs,
            )
        except psycopg.Error as exc:
            raise _map_error(exc, self._where) from exc
        try:
            await conn.execute(pg_sql.SQL("LISTEN {}").format(pg_sql.Identifier(channel)))
            while self._state == "open":
                # Wake now and then to notice that the database was closed.
                async for notify in conn.notifies(timeout=1.0):
                    yield notify.payload
        except psycopg.Error as exc:
            raise _map_error(exc, self._where) from exc
        finally:
            await asyncio.shield(conn.close())


_CHANNEL: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
