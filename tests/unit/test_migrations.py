"""adapters.migrations on the SQLite fake: files, splitting, migrate, status, the shell."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import io
import re
import zipfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.memory import SqliteDatabase
from adapters.migrations import (
    MigrationError,
    load_migrations,
    migrate,
    split_statements,
    status,
)
from adapters.migrations import __main__ as shell
from adapters.migrations.__main__ import main as cli
from domain_errors import ConfigurationError, InternalServerError, ServiceUnavailable
from ports.database import Params, Row, Transaction
from testing.fakes import FakeClock, RecordingLogger

CREATE_A = "-- table a\nCREATE TABLE a (id INTEGER PRIMARY KEY, note TEXT);\n"
CREATE_B = "CREATE TABLE b (id INTEGER PRIMARY KEY);\nINSERT INTO b (id) VALUES (1);\n"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    write(directory, "0001_create_a.sql", CREATE_A)
    write(directory, "0002_create_b.sql", CREATE_B)
    return directory


@pytest.fixture
async def db() -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase()
    await database.connect()
    yield database
    await database.close()


async def tables(db: SqliteDatabase) -> set[str]:
    rows = await db.fetch_all("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row["name"] for row in rows}


async def recorded(db: SqliteDatabase, namespace: str = "app") -> list[str]:
    rows = await db.fetch_all(
        "SELECT version FROM hexinfra_migrations WHERE namespace = %s ORDER BY version",
        (namespace,),
    )
    return [row["version"] for row in rows]


class TestSplitting:
    """Statements are split on ';' outside quotes, dollar quotes and comments."""

    def test_semicolons_inside_quotes_and_comments_do_not_split(self) -> None:
        """';' in strings, E-strings, identifiers, comments and dollar quotes stays."""
        sql = (
            "-- header; comment\n"
            "CREATE TABLE a (x TEXT DEFAULT 'a;b''c'); /* x; /* nested; */ */\n"
            "INSERT INTO a VALUES (E'it\\'s;');\n"
            "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$"
            " LANGUAGE plpgsql;\n"
            'SELECT "we;ird", $$a;b$$ FROM a\n'
        )
        statements = [s.sql for s in split_statements(sql)]
        assert statements == [
            "CREATE TABLE a (x TEXT DEFAULT 'a;b''c')",
            "INSERT INTO a VALUES (E'it\\'s;')",
            "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$"
            " LANGUAGE plpgsql",
            'SELECT "we;ird", $$a;b$$ FROM a',
        ]

    def test_statements_are_numbered_with_their_first_line(self) -> None:
        """Each statement knows its 1-based number and the line it starts on."""
        sql = "-- c\n\nSELECT 1;\n/* c\n c */ SELECT\n 2;  SELECT 3;"
        assert [(s.number, s.line, s.sql) for s in split_statements(sql)] == [
            (1, 3, "SELECT 1"),
            (2, 5, "SELECT\n 2"),
            (3, 6, "SELECT 3"),
        ]

    def test_comment_only_and_empty_statements_are_dropped(self) -> None:
        """Text holding only comments, white space and stray ';' gives no statements."""
        assert split_statements("-- only\n ; /* block */ ;;\n") == []

    def test_positional_dollar_and_identifier_dollar_are_not_quotes(self) -> None:
        """$1 and a$b$ are not dollar quotes, so the ';' after them splits."""
        assert len(split_statements("SELECT $1; SELECT a$b$c; SELECT 2")) == 3

    @pytest.mark.parametrize(
        ("sql", "what"),
        [
            ("SELECT 'open;", "string"),
            ('SELECT "open;', "quoted identifier"),
            ("SELECT 1 /* open; /* */", "comment"),
            ("SELECT $x$ open;", "dollar quote $x$"),
        ],
    )
    def test_unterminated_quote_or_comment_is_refused(self, sql: str, what: str) -> None:
        """An unterminated quote or comment is a ConfigurationError naming file and line."""
        with pytest.raises(
            ConfigurationError,
            match=re.escape(f"0001_x.sql: unterminated {what} starting at line 1"),
        ):
            split_statements(sql, file="0001_x.sql")


class TestFiles:
    """A directory is read and checked before anything runs."""

    def test_files_are_ordered_by_version_number(self, tmp_path: Path) -> None:
        """Versions order numerically (9 before 10), not by file name."""
        write(tmp_path, "10_ten.sql", "SELECT 10;")
        write(tmp_path, "9_nine.sql", "SELECT 9;")
        write(tmp_path, "0011_eleven.sql", "SELECT 11;")
        assert [m.version for m in load_migrations(tmp_path)] == ["9", "10", "0011"]

    def test_other_files_and_directories_are_ignored(self, mdir: Path) -> None:
        """README, __init__.py, hidden files and subdirectories are not migrations."""
        write(mdir, "README.md", "notes")
        write(mdir, "__init__.py", "")
        write(mdir, ".0003_hidden.sql", "SELECT 1;")
        (mdir / "__pycache__").mkdir()
        assert [m.file for m in load_migrations(mdir)] == ["0001_create_a.sql", "0002_create_b.sql"]

    @pytest.mark.parametrize(
        "name", ["create_a.sql", "0003-x.sql", "0003_.sql", "v3_x.sql", "0003_a b.sql"]
    )
    def test_bad_file_name_is_refused(self, mdir: Path, name: str) -> None:
        """A .sql file not named <digits>_<name>.sql is refused, naming it."""
        write(mdir, name, "SELECT 1;")
        with pytest.raises(ConfigurationError, match=f"'{name}' is not <version>_<name>.sql"):
            load_migrations(mdir)

    def test_duplicate_version_is_refused(self, mdir: Path) -> None:
        """Two files with the same version number (0002 and 2) are refused, naming both."""
        write(mdir, "2_other.sql", "SELECT 1;")
        with pytest.raises(
            ConfigurationError, match=re.escape("0002_create_b.sql and 2_other.sql")
        ):
            load_migrations(mdir)

    def test_missing_directory_is_refused(self, tmp_path: Path) -> None:
        """A directory that does not exist is a ConfigurationError naming it."""
        with pytest.raises(ConfigurationError, match="nope does not exist"):
            load_migrations(tmp_path / "nope")

    def test_file_that_is_not_utf8_is_refused(self, mdir: Path) -> None:
        """Bytes that are not UTF-8 are refused, naming the file."""
        (mdir / "0003_latin.sql").write_bytes(b"SELECT '\xe9';")
        with pytest.raises(ConfigurationError, match=re.escape("0003_latin.sql is not UTF-8")):
            load_migrations(mdir)

    @pytest.mark.parametrize("word", ["BEGIN", "commit", "ROLLBACK", "START TRANSACTION"])
    def test_transaction_control_is_refused(self, mdir: Path, word: str) -> None:
        """BEGIN/COMMIT/ROLLBACK in a file are refused: each file is one transaction."""
        write(mdir, "0003_tx.sql", f"SELECT 1;\n-- c\n{word};\n")
        with pytest.raises(ConfigurationError, match=r"0003_tx.sql statement 2 \(line 3\)"):
            load_migrations(mdir)

    def test_checksum_is_sha256_of_the_text_with_unix_line_ends(self, tmp_path: Path) -> None:
        """The checksum is SHA-256 of the text; CRLF and LF checkouts give the same one."""
        (tmp_path / "0001_a.sql").write_bytes(b"SELECT 1;\r\nSELECT 2;\r\n")
        (migration,) = load_migrations(tmp_path)
        assert migration.checksum == hashlib.sha256(b"SELECT 1;\nSELECT 2;\n").hexdigest()
        assert (migration.version, migration.name) == ("0001", "a")

    def test_package_resource_directory_is_accepted(self) -> None:
        """A Traversable from importlib.resources works as the directory."""
        files = load_migrations(importlib.resources.files("examples.orders") / "migrations")
        assert [m.file for m in files] == [
            "0001_create_orders.sql",
            "0002_drop_processed_events.sql",
            "0003_bigint_totals.sql",
        ]
        assert len(files[0].statements) == 3

    def test_traversable_that_is_not_a_path_is_accepted(self, tmp_path: Path) -> None:
        """Migrations inside a zip (a Traversable with no file-system path) load too."""
        archive = tmp_path / "service.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("pkg/migrations/0001_a.sql", "SELECT 1;")
            z.writestr("pkg/migrations/README.md", "notes")
        with zipfile.ZipFile(archive) as z:
            files = load_migrations(zipfile.Path(z, "pkg/migrations/"))
            assert [(m.file, len(m.statements)) for m in files] == [("0001_a.sql", 1)]


class TestMigrate:
    """migrate() applies pending files in order, one transaction each, and records them."""

    async def test_applies_in_order_and_returns_the_versions(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """A fresh database gets every file, in version order; the versions are returned."""
        log = RecordingLogger()
        assert await migrate(db, mdir, logger=log) == ["0001", "0002"]
        assert {"a", "b", "hexinfra_migrations"} <= await tables(db)
        assert await db.fetch_value("SELECT count(*) FROM b") == 1
        log.assert_logged("migration applied", version="0002", file="0002_create_b.sql")

    async def test_second_run_applies_nothing(self, db: SqliteDatabase, mdir: Path) -> None:
        """Up to date: an empty list, and no statement of a file runs again."""
        await migrate(db, mdir, logger=RecordingLogger())
        assert await migrate(db, mdir, logger=RecordingLogger()) == []
        assert await db.fetch_value("SELECT count(*) FROM b") == 1

    async def test_only_new_files_are_applied(self, db: SqliteDatabase, mdir: Path) -> None:
        """A file added later is applied alone on the next run."""
        await migrate(db, mdir, logger=RecordingLogger())
        write(mdir, "0003_add_c.sql", "CREATE TABLE c (id INTEGER);")
        assert await migrate(db, mdir, logger=RecordingLogger()) == ["0003"]

    async def test_records_namespace_version_name_checksum_applied_at(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """Each applied file is one row: namespace, version, name, sha256, applied_at."""
        clock = FakeClock(start=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
        await migrate(db, mdir, logger=RecordingLogger(), clock=clock)
        row = await db.fetch_one(
            "SELECT namespace, version, name, checksum, applied_at FROM hexinfra_migrations"
            " WHERE version = %s",
            ("0001",),
        )
        assert row == {
            "namespace": "app",
            "version": "0001",
            "name": "create_a",
            "checksum": hashlib.sha256(CREATE_A.encode()).hexdigest(),
            "applied_at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        }

    async def test_namespaces_do_not_collide(self, db: SqliteDatabase, tmp_path: Path) -> None:
        """The same version in 'hexinfra' and 'app' is two migrations, each applied."""
        lib, app = tmp_path / "lib", tmp_path / "app"
        lib.mkdir()
        app.mkdir()
        write(lib, "0001_outbox.sql", "CREATE TABLE lib_t (id INTEGER);")
        write(app, "0001_orders.sql", "CREATE TABLE app_t (id INTEGER);")
        assert await migrate(db, lib, logger=RecordingLogger(), namespace="hexinfra") == ["0001"]
        assert await migrate(db, app, logger=RecordingLogger()) == ["0001"]
        assert await recorded(db, "hexinfra") == ["0001"]
        assert await recorded(db, "app") == ["0001"]

    async def test_percent_in_a_file_is_a_literal(self, db: SqliteDatabase, tmp_path: Path) -> None:
        """Migrations take no parameters: '%' in LIKE or a string is a plain '%'."""
        write(
            tmp_path,
            "0001_p.sql",
            "CREATE TABLE p (t TEXT);\nINSERT INTO p (t) VALUES ('50%');\n"
            "DELETE FROM p WHERE t NOT LIKE '%\\%' ESCAPE '\\';",
        )
        await migrate(db, tmp_path, logger=RecordingLogger())
        assert await db.fetch_value("SELECT t FROM p") == "50%"

    @pytest.mark.parametrize("namespace", ["", "a b", "x" * 64, "app;drop"])
    async def test_bad_namespace_is_refused(
        self, db: SqliteDatabase, mdir: Path, namespace: str
    ) -> None:
        """A namespace that is empty, too long or not a plain name is refused."""
        with pytest.raises(ConfigurationError, match="namespace"):
            await migrate(db, mdir, logger=RecordingLogger(), namespace=namespace)


class TestRefusals:
    """Changed, out-of-order and bad files are refused; failures roll back their file."""

    async def test_changed_applied_file_is_refused(self, db: SqliteDatabase, mdir: Path) -> None:
        """Editing an applied file is a ConfigurationError naming it; nothing new runs."""
        await migrate(db, mdir, logger=RecordingLogger())
        write(mdir, "0001_create_a.sql", CREATE_A + "-- edited\n")
        write(mdir, "0003_add_c.sql", "CREATE TABLE c (id INTEGER);")
        with pytest.raises(
            ConfigurationError, match=r"0001_create_a.sql \(namespace app\) was changed"
        ):
            await migrate(db, mdir, logger=RecordingLogger())
        assert "c" not in await tables(db)

    async def test_failing_migration_is_rolled_back_and_named(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """A failing statement rolls its whole file back; the error names file, statement
        and line; the files before it stay applied."""
        write(
            mdir,
            "0003_broken.sql",
            "CREATE TABLE c (id INTEGER);\n\n-- oops\nINSERT INTO missing_table VALUES (1);\n",
        )
        with pytest.raises(MigrationError) as caught:
            await migrate(db, mdir, logger=RecordingLogger())
        message = str(caught.value)
        assert "0003_broken.sql (namespace app) failed at statement 2 (line 4)" in message
        assert "no such table" in message
        assert caught.value.details["file"] == "0003_broken.sql"
        assert caught.value.details["statement"] == 2
        assert caught.value.__cause__ is not None
        assert "c" not in await tables(db)
        assert await recorded(db) == ["0001", "0002"]

    async def test_failure_carries_the_sqlstate(self, db: SqliteDatabase, mdir: Path) -> None:
        """The database's SQLSTATE (here NOT NULL, 23502) is in the error's details."""
        write(
            mdir,
            "0003_null.sql",
            "CREATE TABLE n (id INTEGER NOT NULL);\nINSERT INTO n VALUES (NULL);",
        )
        with pytest.raises(MigrationError) as caught:
            await migrate(db, mdir, logger=RecordingLogger())
        assert caught.value.details["sqlstate"] == "23502"

    async def test_unavailable_database_propagates_unchanged(self, mdir: Path) -> None:
        """ServiceUnavailable in a migration is not wrapped: the caller retries its start."""
        database = _LockRecording(SqliteDatabase())
        database.transactions_run_concurrently = False
        database.unavailable_on = "CREATE TABLE b"
        await database.connect()
        with pytest.raises(ServiceUnavailable, match="injected"):
            await migrate(database, mdir, logger=RecordingLogger())
        assert await database.inner.fetch_value("SELECT count(*) FROM hexinfra_migrations") == 1
        await database.close()

    async def test_fixed_migration_applies_after_a_failure(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """A failed file was never recorded, so the fixed file applies on the next run."""
        write(mdir, "0003_c.sql", "CREATE TABLE c (id INTEGER);\nSELECT nope FROM c;")
        with pytest.raises(MigrationError):
            await migrate(db, mdir, logger=RecordingLogger())
        write(mdir, "0003_c.sql", "CREATE TABLE c (id INTEGER);")
        assert await migrate(db, mdir, logger=RecordingLogger()) == ["0003"]

    async def test_bad_files_are_refused_before_anything_runs(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """A bad name or duplicate version anywhere stops the run before the first file."""
        write(mdir, "0002_dupe.sql", "SELECT 1;")
        with pytest.raises(ConfigurationError, match="same version"):
            await migrate(db, mdir, logger=RecordingLogger())
        assert await tables(db) == set()

    async def test_file_older_than_the_last_applied_is_refused(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """A new file numbered below an applied version is refused (order is the promise)."""
        (mdir / "0001_create_a.sql").rename(mdir / "0005_create_a.sql")
        await migrate(db, mdir, logger=RecordingLogger())
        write(mdir, "0003_late.sql", "CREATE TABLE late (id INTEGER);")
        with pytest.raises(ConfigurationError, match=r"0003_late\.sql .* older than version 0005"):
            await migrate(db, mdir, logger=RecordingLogger())

    async def test_applied_version_without_file_is_a_warning(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """An applied version whose file is gone (an older release) is logged, not refused."""
        await migrate(db, mdir, logger=RecordingLogger())
        (mdir / "0002_create_b.sql").unlink()
        log = RecordingLogger()
        assert await migrate(db, mdir, logger=log) == []
        log.assert_logged(
            re.compile("applied migrations have no file"), level="warning", versions=["0002"]
        )


class _LockRecording:
    """A Database over the fake that claims concurrent transactions, so migrate takes
    the lock; lock statements are recorded and answered here, the rest forwarded."""

    transactions_run_concurrently = True

    def __init__(self, inner: SqliteDatabase) -> None:
        self.inner = inner
        self.statements: list[str] = []
        self.lock_keys: list[int] = []
        self.unavailable_on: str | None = None

    async def connect(self) -> None:
        await self.inner.connect()

    async def health_check(self) -> None:
        await self.inner.health_check()

    async def close(self, timeout: float = 5.0) -> None:
        await self.inner.close(timeout)

    async def execute(self, sql: str, params: Params = ()) -> int:
        self.statements.append(sql)
        return await self.inner.execute(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        self.statements.append(sql)
        return await self.inner.fetch_one(sql, params)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        self.statements.append(sql)
        return await self.inner.fetch_all(sql, params)

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        self.statements.append(sql)
        return await self.inner.fetch_value(sql, params)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Transaction]:
        async with self.inner.transaction() as tx:
            yield _RecordingTx(self, tx)


class _RecordingTx:
    def __init__(self, db: _LockRecording, inner: Transaction) -> None:
        self._db = db
        self._inner = inner

    async def execute(self, sql: str, params: Params = ()) -> int:
        self._db.statements.append(sql)
        if self._db.unavailable_on is not None and self._db.unavailable_on in sql:
            raise ServiceUnavailable("injected: database went away")
        if sql.startswith("SELECT pg_advisory_xact_lock"):
            self._db.lock_keys.append(params[0])  # type: ignore[index]
            return 1
        if sql.startswith("SET TRANSACTION") or sql == "RESET ALL":
            return 0
        return await self._inner.execute(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        self._db.statements.append(sql)
        return await self._inner.fetch_one(sql, params)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        self._db.statements.append(sql)
        return await self._inner.fetch_all(sql, params)

    async def fetch_value(self, sql: str, params: Params = ()) -> Any:
        self._db.statements.append(sql)
        return await self._inner.fetch_value(sql, params)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._inner.transaction()


class TestLockPath:
    """The SQLite fake runs the same statements as PostgreSQL, minus the lock."""

    async def test_same_statements_apart_from_the_lock(self, mdir: Path) -> None:
        """With the lock, each transaction starts with SET TRANSACTION and the advisory
        lock, and a migration's ends with RESET ALL (no session setting of a migration
        stays on a pooled connection); without them the sequence is the fake's."""
        fake = SqliteDatabase()
        locking = _LockRecording(SqliteDatabase())
        plain = _LockRecording(fake)
        plain.transactions_run_concurrently = False
        for database in (locking, plain):
            await database.connect()
            assert await migrate(database, mdir, logger=RecordingLogger()) == ["0001", "0002"]
            await database.close()
        locks = [s for s in locking.statements if "pg_advisory_xact_lock" in s]
        assert len(locks) == 4  # the table, then one per transaction: 0001, 0002, up to date
        assert locking.statements.count("RESET ALL") == 2  # one per applied migration
        assert not any(
            "pg_advisory" in s or "SET TRANSACTION" in s or s == "RESET ALL"
            for s in plain.statements
        )
        without_lock = [
            s
            for s in locking.statements
            if not s.startswith(("SET TRANSACTION", "SELECT pg_advisory_xact_lock", "RESET ALL"))
        ]
        assert without_lock == plain.statements

    async def test_namespaces_lock_different_keys(self, mdir: Path) -> None:
        """The advisory-lock key depends on the namespace, and the table has its own."""
        keys: dict[str, set[int]] = {}
        for namespace in ("app", "hexinfra"):
            database = _LockRecording(SqliteDatabase())
            await database.connect()
            await migrate(database, mdir, logger=RecordingLogger(), namespace=namespace)
            await database.close()
            keys[namespace] = set(database.lock_keys)
        assert len(keys["app"]) == len(keys["hexinfra"]) == 2
        assert len(keys["app"] & keys["hexinfra"]) == 1  # the shared table lock


class TestStatus:
    """status() lists every migration's state and changes nothing."""

    async def test_before_anything_every_file_is_pending_and_no_table_made(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """With no hexinfra_migrations table yet, every file is pending; none is created."""
        states = await status(db, mdir)
        assert [(s.version, s.state) for s in states] == [("0001", "pending"), ("0002", "pending")]
        assert await tables(db) == set()

    async def test_applied_changed_missing_and_pending(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """Applied, changed (checksum differs), missing (no file) and pending are told apart."""
        write(mdir, "0003_c.sql", "CREATE TABLE c (id INTEGER);")
        await migrate(db, mdir, logger=RecordingLogger())
        write(mdir, "0001_create_a.sql", CREATE_A + "-- edited\n")
        (mdir / "0003_c.sql").unlink()
        write(mdir, "0004_d.sql", "CREATE TABLE d (id INTEGER);")
        states = await status(db, mdir)
        assert [(s.version, s.name, s.state) for s in states] == [
            ("0001", "create_a", "changed"),
            ("0002", "create_b", "applied"),
            ("0003", "c", "missing"),
            ("0004", "d", "pending"),
        ]
        assert isinstance(states[1].applied_at, datetime)
        assert states[2].file is None

    async def test_other_read_errors_are_not_taken_for_a_missing_table(
        self, db: SqliteDatabase, mdir: Path
    ) -> None:
        """A hexinfra_migrations table of another shape is an error, not 'all pending'."""
        await db.execute("CREATE TABLE hexinfra_migrations (something TEXT)")
        with pytest.raises(InternalServerError, match="no such column"):
            await status(db, mdir)


@pytest.fixture
def shell_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DATABASE_URL and no .env file in the working directory."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)


class TestShell:
    """python -m adapters.migrations: exit codes and one-line errors (no server here)."""

    @pytest.mark.usefixtures("shell_env")
    def test_missing_database_url_is_one_line_and_exit_1(
        self, mdir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without DATABASE_URL: exit 1 and one 'error:' line naming the key."""
        assert cli(["up", "--dir", str(mdir)], out=io.StringIO()) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith("error: ")
        assert "DATABASE_URL" in err[0]

    @pytest.mark.usefixtures("shell_env")
    def test_bad_directory_is_one_line_and_exit_1(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad file is refused before connecting: exit 1, one line naming the file."""
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/x")
        write(tmp_path, "1-bad.sql", "SELECT 1;")
        assert cli(["status", "--dir", str(tmp_path)], out=io.StringIO()) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            "error: migration file name '1-bad.sql' is not <version>_<name>.sql (digits, an "
            "underscore, then letters, digits, '_' or '-'), e.g. 0001_create_orders.sql"
        ]

    @pytest.mark.usefixtures("shell_env")
    def test_up_and_status_print_one_line_each(
        self, mdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """up prints the versions (then 'up to date'); status a line per file; exit 0;
        status exits 1 naming a changed file."""
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.invalid/x")
        fake = SqliteDatabase()
        closed = fake.close

        async def keep_open(timeout: float = 5.0) -> None:  # one fake for several runs
            pass

        monkeypatch.setattr(fake, "close", keep_open)
        monkeypatch.setattr(shell, "_database", lambda config, logger: fake)
        out = io.StringIO()
        assert cli(["up", "--dir", str(mdir)], out=out) == 0
        assert cli(["up", "--dir", str(mdir)], out=out) == 0
        assert cli(["status", "--dir", str(mdir)], out=out) == 0
        lines = out.getvalue().splitlines()
        assert lines[:2] == ["applied 0001, 0002", "up to date"]
        assert [line.split("\t")[:3] for line in lines[2:]] == [
            ["0001", "applied", "create_a"],
            ["0002", "applied", "create_b"],
        ]
        write(mdir, "0002_create_b.sql", CREATE_B + "-- edited\n")
        assert cli(["status", "--dir", str(mdir)], out=io.StringIO()) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == "error: applied migrations changed since they were applied: " + (
            "0002_create_b.sql"
        )
        asyncio.run(closed())

    @pytest.mark.usefixtures("shell_env")
    def test_unexpected_error_is_one_line_with_its_type(
        self, mdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Any other failure is still one line, naming the exception type."""

        def broken(config: object, logger: object) -> SqliteDatabase:
            raise RuntimeError("no driver\nsecond line")

        monkeypatch.setattr(shell, "_database", broken)
        assert cli(["up", "--dir", str(mdir)], out=io.StringIO()) == 1
        assert capsys.readouterr().err.splitlines() == [
            "error: RuntimeError: no driver second line"
        ]

    def test_usage_error_is_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown command or a missing --dir is a usage error (exit 2)."""
        with pytest.raises(SystemExit) as caught:
            cli(["sideways", "--dir", "x"])
        assert caught.value.code == 2
        with pytest.raises(SystemExit) as caught:
            cli(["up"])
        assert caught.value.code == 2
        assert "usage:" in capsys.readouterr().err
