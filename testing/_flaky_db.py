"""FlakyDatabase: wrap any :class:`ports.database.Database` to inject failures or latency."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import attrs

from domain_errors import ServiceUnavailable
from ports.clock import Clock, SystemClock
from ports.database import Database, Params, Row, Transaction

__all__ = ["FlakyDatabase", "DatabaseCall", "DATABASE_METHODS"]

DATABASE_METHODS: Final = frozenset(
    {"connect", "health_check", "execute", "fetch_one", "fetch_all", "fetch_value", "transaction"}
)
"""Names a failure or latency can be restricted to (``close`` is never failed)."""

ErrorSpec = type[BaseException] | BaseException | Callable[[str], BaseException]


@attrs.frozen
class DatabaseCall:
    """One call that reached the wrapper: which method, on what, and whether it was failed.

    ``sql``/``params`` are ``None`` for ``connect``, ``health_check``, ``transaction``
    and ``close``. ``in_transaction`` is true for statements (and savepoints) run on
    a transaction object. ``injected`` is the error raised instead of calling the
    wrapped database, or ``None`` when the call went through.
    """

    method: str
    sql: str | None = None
    params: Params | None = None
    in_transaction: bool = False
    injected: BaseException | None = attrs.field(default=None, eq=False)


def _build(spec: ErrorSpec, method: str) -> BaseException:
    if isinstance(spec, BaseException):
        return copy.copy(spec)
    return spec(f"injected failure in {method}")


class FlakyDatabase:
    """A :class:`~ports.database.Database` that fails or slows down on demand.

    ``fail_next(n, error=...)`` makes the next ``n`` calls (optionally only of the named
    ``methods``) raise ``error`` instead of reaching the wrapped database; ``error`` is
    an exception class (built with a message naming the method), an instance (copied
    for each failure) or a callable taking the method name; the default is
    ``ServiceUnavailable``. ``set_latency(s)`` makes every call first sleep ``s``
    seconds on the injected :class:`~ports.clock.Clock` (a ``FakeClock`` makes that
    deterministic). Statements and savepoints run through a transaction object count
    as calls too, so a failure can be injected in the middle of a transaction.
    ``calls`` records every call in order. Attributes the wrapper does not define
    (``pool_stats`` ...) are read from the wrapped database.
    """

    def __init__(self, inner: Database, *, clock: Clock | None = None) -> None:
        self.inner = inner
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.calls: list[DatabaseCall] = []
        self._failures: list[tuple[ErrorSpec, frozenset[str]]] = []
        self._latency = 0.0
        self._latency_methods: frozenset[str] = DATABASE_METHODS

    # --- configuration ---------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        error: ErrorSpec = ServiceUnavailable,
        methods: Iterable[str] | None = None,
    ) -> None:
        """Make the next ``count`` matching calls raise ``error`` (queued after any
        failures already pending)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        names = self._methods(methods)
        self._failures.extend((error, names) for _ in range(count))

    def set_latency(self, seconds: float, *, methods: Iterable[str] | None = None) -> None:
        """Delay every matching call by ``seconds`` on the clock (0 turns it off)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = seconds
        self._latency_methods = self._methods(methods)

    def reset(self) -> None:
        """Drop pending failures and latency, and forget recorded calls."""
        self._failures.clear()
        self._latency = 0.0
        self._latency_methods = DATABASE_METHODS
        self.calls.clear()

    @property
    def pending_failures(self) -> int:
        """How many injected failures are still waiting for a call."""
        return len(self._failures)

    def calls_to(self, method: str) -> list[DatabaseCall]:
        """The recorded calls of ``method``."""
        return [call for call in self.calls if call.method == method]

    @staticmethod
    def _methods(methods: Iterable[str] | None) -> frozenset[str]:
        if methods is None:
            return DATABASE_METHODS
        names = frozenset(methods)
        unknown = names - DATABASE_METHODS
        if unknown:
            raise ValueError(f"unknown method(s): {', '.join(sorted(unknown))}")
        return names

    # --- interception ----------------------------------------------------------------

    async def _enter(
        self,
        method: str,
        sql: str | None = None,
        params: Params | None = None,
        *,
        in_transaction: bool = False,
    ) -> None:
        if self._latency > 0 and method in self._latency_methods:
            await self.clock.sleep(self._latency)
        injected: BaseException | None = None
        for index, (spec, names) in enumerate(self._failures):
            if method in names:
                del self._failures[index]
                injected = _build(spec, method)
                break
        self.calls.append(DatabaseCall(method, sql, params, in_transaction, injected))
        if injected is not None:
            raise injected

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"FlakyDatabase({self.inner!r}, pending_failures={self.pending_failures})"

    # --- Database --------------------------------------------------------------------

    async def connect(self) -> None:
        await self._enter("connect")
        await self.inner.connect()

    async def health_check(self) -> None:
        await self._enter("health_check")
        await self.inner.health_check()

    async def close(self, timeout: float = 5.0) -> None:
        self.calls.append(DatabaseCall("close"))
        await self.inner.close(timeout)

    async def execute(self, sql: str, params: Params = ()) -> int:
        await self._enter("execute", sql, params)
        return await self.inner.execute(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        await self._enter("fetch_one", sql, params)
        return await self.inner.fetch_one(sql, params)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        await self._enter("fetch_all", sql, params)
        return await self.inner.fetch_all(sql, params)

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        await self._enter("fetch_value", sql, params)
        return await self.inner.fetch_value(sql, params)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._wrap_block(self.inner.transaction, in_transaction=False)

    @asynccontextmanager
    async def _wrap_block(
        self,
        open_block: Callable[[], AbstractAsyncContextManager[Transaction]],
        *,
        in_transaction: bool,
    ) -> AsyncIterator[Transaction]:
        await self._enter("transaction", in_transaction=in_transaction)
        async with open_block() as tx:
            yield _FlakyTransaction(self, tx)


class _FlakyTransaction:
    """A transaction whose statements go through the wrapper's interception."""

    __slots__ = ("_flaky", "_inner")

    def __init__(self, flaky: FlakyDatabase, inner: Transaction) -> None:
        self._flaky = flaky
        self._inner = inner

    async def execute(self, sql: str, params: Params = ()) -> int:
        await self._flaky._enter("execute", sql, params, in_transaction=True)
        return await self._inner.execute(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        await self._flaky._enter("fetch_one", sql, params, in_transaction=True)
        return await self._inner.fetch_one(sql, params)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        await self._flaky._enter("fetch_all", sql, params, in_transaction=True)
        return await self._inner.fetch_all(sql, params)

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        await self._flaky._enter("fetch_value", sql, params, in_transaction=True)
        return await self._inner.fetch_value(sql, params)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._flaky._wrap_block(self._inner.transaction, in_transaction=True)
