"""Database: async SQL with psycopg-style parameters and nested transactions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeAlias, runtime_checkable

__all__ = ["Row", "Params", "Queryable", "Transaction", "Database"]

Row: TypeAlias = Mapping[str, Any]
"""One result row: column name to value."""

Params: TypeAlias = Sequence[Any] | Mapping[str, Any]
"""Query parameters: a sequence for ``%s`` placeholders, a mapping for ``%(name)s``."""


@runtime_checkable
class Queryable(Protocol):
    """Something SQL can be run on: a database (autocommit) or a transaction.

    Values only ever travel as ``params``; no method formats values into SQL.
    Failures raise :mod:`domain_errors` exceptions with the driver error as
    ``__cause__``: unique or foreign-key violation -> ``Conflict``; connection lost,
    pool exhausted, server down -> ``ServiceUnavailable``; anything else ->
    ``InternalServerError``. Messages never contain parameter values or passwords.
    """

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; return the number of rows it affected (-1 if unknown)."""
        ...

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        """The first row of the result, or ``None`` when it is empty."""
        ...

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        """Every row of the result, in order."""
        ...

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, or ``None`` when there is no row."""
        ...


@runtime_checkable
class Transaction(Queryable, Protocol):
    """A unit of work on one connection.

    Statements run in order on one connection. ``transaction()`` opens a nested
    savepoint with the same commit/rollback rules as the outer one. A transaction
    is bound to the task that opened it: do not share it between concurrent tasks.
    """

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A savepoint inside this transaction."""
        ...


@runtime_checkable
class Database(Queryable, Protocol):
    """A pool of connections to one database.

    Contract:

    - The constructor does no I/O; ``connect()`` opens the pool (retrying with
      backoff) and raises ``ServiceUnavailable`` if the server never answers.
    - Each call on the Database itself runs in autocommit on a connection from
      the pool; it is safe to call from many tasks at once.
    - ``transaction()`` yields a :class:`Transaction`: commit on normal exit,
      rollback when the block raises (the exception propagates).
    - ``health_check()`` raises ``ServiceUnavailable`` when the database does not
      answer within its timeout, and returns ``None`` otherwise.
    - ``close(timeout)`` stops taking work, lets in-flight calls finish for up to
      ``timeout`` seconds, then closes anyway. It is idempotent.
    """

    async def connect(self) -> None: ...

    async def health_check(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def close(self, timeout: float = 5.0) -> None: ...
