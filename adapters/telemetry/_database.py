"""TracedDatabase: spans and query-duration metrics around any Database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, Final, cast

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ports.database import Database, Params, Queryable, Row, Transaction

from ._instruments import Telemetry

__all__ = ["TracedDatabase", "operation_name", "db_system"]

_MAX_QUERY_TEXT: Final = 4096


def operation_name(sql: str) -> str:
    """The statement's first keyword, upper case (``SELECT``, ``INSERT`` ...)."""
    text = sql.lstrip()
    while text.startswith(("--", "/*")):
        if text.startswith("--"):
            _, _, text = text.partition("\n")
        else:
            _, _, text = text.partition("*/")
        text = text.lstrip()
    word = text.split(None, 1)[0] if text else ""
    word = word.rstrip(";(").upper()
    return word if word.isalpha() else "UNKNOWN"


def db_system(database: object) -> str:
    """``postgresql`` for PostgresDatabase, ``sqlite`` for the SQLite fake, else
    ``other_sql`` (semantic conventions' ``db.system.name``)."""
    name = type(database).__name__.lower()
    if name.startswith("postgres"):
        return "postgresql"
    if "sqlite" in name:
        return "sqlite"
    return "other_sql"


def _default_pool_name(owner: object, system: str) -> str:
    settings = getattr(owner, "settings", None)
    name = getattr(settings, "application_name", None)
    return name if isinstance(name, str) and name else system


class _Traced:
    __slots__ = ("_inner", "_system", "_tel")

    def __init__(self, inner: Queryable, tel: Telemetry, system: str) -> None:
        self._inner = inner
        self._tel = tel
        self._system = system

    @contextmanager
    def _span(self, sql: str) -> Iterator[None]:
        op = operation_name(sql)
        attributes = {
            "db.system.name": self._system,
            "db.operation.name": op,
            "db.query.text": sql if len(sql) <= _MAX_QUERY_TEXT else sql[:_MAX_QUERY_TEXT],
        }
        start = time.perf_counter()
        error: str | None = None
        with self._tel.tracer.start_as_current_span(
            op,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as exc:
                error = type(exc).__qualname__
                span.set_attribute("error.type", error)
                # The type only: a driver's message may quote row values.
                span.set_status(Status(StatusCode.ERROR, error))
                raise
            finally:
                labels = {"db.system.name": self._system, "db.operation.name": op}
                if error is not None:
                    labels["error.type"] = error
                self._tel.query_duration.record(time.perf_counter() - start, labels)

    async def execute(self, sql: str, params: Params = ()) -> int:
        with self._span(sql):
            return await self._inner.execute(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        with self._span(sql):
            return await self._inner.fetch_one(sql, params)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        with self._span(sql):
            return await self._inner.fetch_all(sql, params)

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        with self._span(sql):
            return await self._inner.fetch_value(sql, params)


class _TracedTransaction(_Traced):
    __slots__ = ()

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return _nested(cast(Transaction, self._inner).transaction(), self._tel, self._system)

    def __repr__(self) -> str:
        return f"Traced({self._inner!r})"


@asynccontextmanager
async def _nested(
    cm: AbstractAsyncContextManager[Transaction], tel: Telemetry, system: str
) -> AsyncIterator[Transaction]:
    async with cm as tx:
        yield _TracedTransaction(tx, tel, system)


class TracedDatabase(_Traced):
    """The :class:`~ports.database.Database` ``database`` with a CLIENT span per
    statement (``db.system.name``, ``db.operation.name``, ``db.query.text``: the SQL
    as written, whose values are always parameters and never recorded) and the
    ``hexinfra.db.query.duration`` histogram; ``hexinfra.db.pool.in_use`` /
    ``hexinfra.db.pool.waiting`` gauges when the database reports its pool
    (``pool_usage()``), with ``db.client.connection.pool.name`` (``pool_name``, by
    default the database's ``settings.application_name``, else ``db.system.name``).
    A pool is one source of each gauge per meter provider however often it is wrapped
    (``TracedDatabase(TracedDatabase(db))``, two wrappers over one database); pools
    sharing a name are summed. Other attributes pass through to ``database``."""

    __slots__ = ("_gauges",)

    def __init__(
        self,
        database: Database,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        system: str | None = None,
        telemetry: Telemetry | None = None,
        pool_name: str | None = None,
    ) -> None:
        tel = telemetry or Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        super().__init__(database, tel, system or db_system(database))
        self._gauges: Sequence[object] = ()
        usage = getattr(database, "pool_usage", None)
        if callable(usage):
            # The pool's owner (a wrapper's __getattr__ hands out its bound method):
            # however often it is wrapped, its pool is one source of each gauge.
            owner = getattr(usage, "__self__", usage)
            pool = pool_name or _default_pool_name(owner, self._system)
            labels = {"db.system.name": self._system, "db.client.connection.pool.name": pool}
            in_use = tel.shared_gauge(
                "hexinfra.db.pool.in_use",
                unit="{connection}",
                description="Connections held by callers (0 when idle), summed per pool name",
                combine="sum",
            )
            waiting = tel.shared_gauge(
                "hexinfra.db.pool.waiting",
                unit="{request}",
                description="Callers waiting for a connection (0 when idle), summed per pool name",
                combine="sum",
            )
            in_use.add(owner, lambda o: [(o.pool_usage()[0], labels)])
            waiting.add(owner, lambda o: [(o.pool_usage()[1], labels)])
            self._gauges = (in_use, waiting)

    @property
    def wrapped(self) -> Database:
        """The database this wraps."""
        return cast(Database, self._inner)

    async def connect(self) -> None:
        await self.wrapped.connect()

    async def health_check(self) -> None:
        await self.wrapped.health_check()

    async def close(self, timeout: float = 5.0) -> None:
        await self.wrapped.close(timeout)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return _nested(self.wrapped.transaction(), self._tel, self._system)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"TracedDatabase({self._inner!r})"
