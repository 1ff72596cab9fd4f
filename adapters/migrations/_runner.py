"""migrate() and status() on the :class:`ports.database.Database` port."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from adapters.redaction import redact_error_text, safe_str
from domain_errors import ConfigurationError, DomainError, InternalServerError, ServiceUnavailable
from ports.clock import Clock, SystemClock
from ports.database import Database, Queryable, Transaction
from ports.logger import Logger

from ._files import Migration, MigrationSource, Statement, load_migrations

__all__ = ["MigrationError", "MigrationState", "TABLE", "migrate", "status"]

TABLE: Final = "hexinfra_migrations"
"""The table that records applied migrations, shared by every namespace."""

_CREATE_TABLE: Final = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    namespace TEXT NOT NULL,
    version TEXT NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (namespace, version)
)"""
_SELECT_APPLIED: Final = (
    f"SELECT version, name, checksum, applied_at FROM {TABLE} WHERE namespace = %s"
)
_INSERT: Final = (
    f"INSERT INTO {TABLE} (namespace, version, name, checksum, applied_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)
_NAMESPACE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (stable across processes)."""
    digest = hashlib.sha256(f"hexinfra_migrations:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_TABLE_LOCK: Final = _lock_key("\x00table")


class MigrationError(InternalServerError):
    """A migration failed and was rolled back; names the file and the statement.

    ``details``: ``namespace``, ``version``, ``file``, ``statement`` (1-based number in
    the file) and ``line``, plus the database error's ``sqlstate`` when it gave one.
    The database's error is chained as ``__cause__``.
    """


@dataclass(frozen=True, slots=True)
class MigrationState:
    """One row of :func:`status`: a migration file, an applied version, or both.

    ``state``: ``applied``; ``pending`` (a file not applied yet); ``changed`` (applied,
    but the file's checksum differs from the recorded one: ``migrate`` refuses it);
    ``missing`` (applied, but no file has this version any more).
    """

    version: str
    name: str
    state: Literal["applied", "pending", "changed", "missing"]
    applied_at: datetime | None = None
    file: str | None = None


def _check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or _NAMESPACE.match(namespace) is None:
        raise ConfigurationError(
            f"migration namespace {namespace!r} must be 1-63 letters, digits, '_', '.' or '-'",
            details={"namespace": str(namespace)},
        )


def _needs_lock(database: Database) -> bool:
    """Whether other sessions can run transactions at the same time as ours.

    ``SqliteDatabase`` says no (``transactions_run_concurrently = False``: one
    connection, transactions serialized); every other Database, PostgresDatabase
    first, takes the advisory lock.
    """
    return getattr(database, "transactions_run_concurrently", True) is not False


async def _lock(tx: Transaction, key: int) -> None:
    # READ COMMITTED (whatever default_transaction_isolation says) so that the
    # statements after the lock see what the previous holder committed.
    await tx.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
    await tx.execute("SELECT pg_advisory_xact_lock(%s)", (key,))


async def _applied(db: Queryable, namespace: str) -> dict[int, Mapping[str, Any]]:
    rows = await db.fetch_all(_SELECT_APPLIED, (namespace,))
    return {int(row["version"]): row for row in rows}


def _changed(migration: Migration, namespace: str, recorded: str) -> ConfigurationError:
    return ConfigurationError(
        f"migration {migration.file} (namespace {namespace}) was changed after it was "
        f"applied (checksum {migration.checksum[:12]}..., recorded {recorded[:12]}...); "
        "add a new migration instead of editing an applied one",
        details={"namespace": namespace, "file": migration.file, "version": migration.version},
    )


def _pending(
    migrations: Sequence[Migration],
    applied: Mapping[int, Mapping[str, Any]],
    namespace: str,
) -> list[Migration]:
    """The migrations still to apply, in order, after checking the applied ones."""
    pending: list[Migration] = []
    for migration in migrations:
        row = applied.get(migration.number)
        if row is None:
            pending.append(migration)
        elif row["checksum"] != migration.checksum:
            raise _changed(migration, namespace, str(row["checksum"]))
    if pending and applied:
        latest = max(applied)
        early = [m for m in pending if m.number < latest]
        if early:
            raise ConfigurationError(
                f"migration {early[0].file} (namespace {namespace}) is older than version "
                f"{applied[latest]['version']}, which is already applied; migrations run in "
                "version order, so give it a version after the last applied one",
                details={"namespace": namespace, "file": early[0].file},
            )
    return pending


async def _apply(
    tx: Transaction, migration: Migration, namespace: str, clock: Clock, *, reset: bool
) -> None:
    statement: Statement | None = None
    try:
        for statement in migration.statements:
            # Migrations take no parameters: a '%' in the file is a literal '%'.
            await tx.execute(statement.sql.replace("%", "%%"))
    except ServiceUnavailable:
        raise
    except DomainError as exc:
        assert statement is not None
        reason = safe_str(exc)
        if exc.__cause__ is not None:
            # The driver's own text (already without row values, ADR 0026) says where.
            cause = redact_error_text(safe_str(exc.__cause__))
            reason = reason if cause in reason else f"{reason}: {cause}"
        details: dict[str, Any] = {
            "namespace": namespace,
            "version": migration.version,
            "file": migration.file,
            "statement": statement.number,
            "line": statement.line,
        }
        if "sqlstate" in exc.details:
            details["sqlstate"] = exc.details["sqlstate"]
        raise MigrationError(
            f"migration {migration.file} (namespace {namespace}) failed at statement "
            f"{statement.number} (line {statement.line}) and was rolled back: {reason}",
            details=details,
            public_details=False,
        ) from exc
    await tx.execute(
        _INSERT,
        (namespace, migration.version, migration.name, migration.checksum, clock.now()),
    )
    if reset:
        # A plain SET in a migration (search_path, lock_timeout, a role...) would stay on
        # the pooled connection after the commit: the service's own queries must not
        # run under it.
        await tx.execute("RESET ALL")


async def migrate(
    database: Database,
    directory: MigrationSource,
    *,
    logger: Logger,
    namespace: str = "app",
    clock: Clock | None = None,
) -> list[str]:
    """Apply the migrations of ``directory`` not yet applied in ``namespace``.

    Returns the versions applied by this call, in order (empty when up to date).
    Files are read and checked first (:func:`load_migrations`): a bad name, a
    duplicate version, transaction control... is a ``ConfigurationError`` before
    anything runs. Then, one transaction per file: take the namespace's advisory lock
    (PostgreSQL: ``pg_advisory_xact_lock``, released by the commit; not on the
    single-connection SQLite fake), read which versions are applied, check every
    applied file's checksum (a changed one is a ``ConfigurationError`` naming it),
    and apply the lowest pending version and record it in ``hexinfra_migrations``.
    So replicas starting together wait for each other and apply each file once.
    A failing statement rolls its whole file back: :class:`MigrationError` names the
    file, the statement number and its line; the files before it stay applied.
    ``ServiceUnavailable`` (database down, timeouts) propagates unchanged.

    ``directory`` is a path or a package resource
    (``importlib.resources.files("pkg") / "migrations"``). ``clock`` stamps
    ``applied_at`` (default: the system clock).
    """
    _check_namespace(namespace)
    migrations = load_migrations(directory)
    clock = clock if clock is not None else SystemClock()
    lock = _needs_lock(database)
    log = logger.bind(namespace=namespace)
    async with database.transaction() as tx:
        if lock:
            # Concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL: one lock for
            # the table, whatever the namespace.
            await _lock(tx, _TABLE_LOCK)
        await tx.execute(_CREATE_TABLE)
    done: list[str] = []
    first = True
    while True:
        async with database.transaction() as tx:
            if lock:
                await _lock(tx, _lock_key(namespace))
            applied = await _applied(tx, namespace)
            if first:
                _warn_missing(log, migrations, applied)
                first = False
            pending = _pending(migrations, applied, namespace)
            if not pending:
                break
            migration = pending[0]
            started = clock.monotonic()
            await _apply(tx, migration, namespace, clock, reset=lock)
        done.append(migration.version)
        log.info(
            "migration applied",
            version=migration.version,
            file=migration.file,
            statements=len(migration.statements),
            duration_ms=round((clock.monotonic() - started) * 1000.0, 1),
        )
    if done:
        log.info("migrations applied", versions=done)
    else:
        log.info("migrations up to date", versions_known=len(migrations))
    return done


def _warn_missing(
    log: Logger, migrations: Sequence[Migration], applied: Mapping[int, Mapping[str, Any]]
) -> None:
    known = {m.number for m in migrations}
    missing = [str(row["version"]) for n, row in sorted(applied.items()) if n not in known]
    if missing:
        log.warning(
            "applied migrations have no file (an older release running, or files removed)",
            versions=missing,
        )


def _is_missing_table(exc: DomainError) -> bool:
    return exc.details.get("sqlstate") == "42P01" or "no such table" in str(exc)


async def status(
    database: Database, directory: MigrationSource, *, namespace: str = "app"
) -> list[MigrationState]:
    """Every migration of ``namespace``, file or applied row, in version order.

    Reads only: it creates no table (with no ``hexinfra_migrations`` table yet,
    every file is ``pending``) and takes no lock. Bad files are refused as by
    :func:`migrate`.
    """
    _check_namespace(namespace)
    migrations = load_migrations(directory)
    try:
        applied = await _applied(database, namespace)
    except InternalServerError as exc:
        if not _is_missing_table(exc):
            raise
        applied = {}
    states: dict[int, MigrationState] = {}
    for m in migrations:
        row = applied.get(m.number)
        if row is None:
            states[m.number] = MigrationState(m.version, m.name, "pending", file=m.file)
        else:
            state: Literal["applied", "changed"] = (
                "applied" if row["checksum"] == m.checksum else "changed"
            )
            states[m.number] = MigrationState(m.version, m.name, state, row["applied_at"], m.file)
    for number, row in applied.items():
        if number not in states:
            states[number] = MigrationState(
                str(row["version"]), str(row["name"]), "missing", row["applied_at"]
            )
    return [states[number] for number in sorted(states)]
