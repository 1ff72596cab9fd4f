"""adapters.migrations on a real PostgreSQL: transactions, the advisory lock, the shell."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.migrations import MigrationError, migrate, status
from adapters.migrations._runner import _TABLE_LOCK
from adapters.postgres import PostgresDatabase, PostgresSettings
from domain_errors import ConfigurationError
from testing.fakes import RecordingLogger
from tests.helpers import wait_until_async

pytestmark = pytest.mark.integration

COUNTED = {
    # Each file INSERTs a row into runs: a file applied twice would leave two rows.
    "0001_create_runs.sql": (
        "-- the counter table\nCREATE TABLE runs (version TEXT NOT NULL);\n"
        "INSERT INTO runs (version) VALUES ('0001');\n"
    ),
    "0002_orders.sql": (
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, note TEXT);\n"
        "INSERT INTO runs (version) VALUES ('0002');\n"
    ),
    "0003_function.sql": (
        "CREATE FUNCTION bump() RETURNS integer LANGUAGE plpgsql AS $body$\n"
        "BEGIN\n  INSERT INTO runs (version) VALUES ('0003');\n  RETURN 1;\nEND;\n$body$;\n"
        "SELECT bump();\n"
    ),
}


def make_db(url: str, **overrides: Any) -> PostgresDatabase:
    settings = PostgresSettings(url=url, **{"pool_min_size": 1, "pool_max_size": 3, **overrides})
    return PostgresDatabase(settings, RecordingLogger())


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in COUNTED.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[PostgresDatabase]:
    database = make_db(database_url)
    await database.connect()
    yield database
    await database.close()


async def runs(db: PostgresDatabase) -> list[str]:
    rows = await db.fetch_all("SELECT version FROM runs ORDER BY version")
    return [row["version"] for row in rows]


async def recorded(db: PostgresDatabase, namespace: str = "app") -> list[str]:
    rows = await db.fetch_all(
        "SELECT version FROM hexinfra_migrations WHERE namespace = %s ORDER BY version",
        (namespace,),
    )
    return [row["version"] for row in rows]


class TestMigrate:
    """migrate() on PostgreSQL: order, record, refusals, rollback of a failing file."""

    async def test_applies_each_file_once_and_records_it(
        self, db: PostgresDatabase, mdir: Path
    ) -> None:
        """Every file runs once, dollar-quoted bodies included; a rerun applies nothing."""
        assert await migrate(db, mdir, logger=RecordingLogger()) == ["0001", "0002", "0003"]
        assert await migrate(db, mdir, logger=RecordingLogger()) == []
        assert await runs(db) == ["0001", "0002", "0003"]
        row = await db.fetch_one(
            "SELECT namespace, name, checksum, applied_at FROM hexinfra_migrations"
            " WHERE version = '0002'"
        )
        assert row is not None
        assert (row["namespace"], row["name"], len(row["checksum"])) == ("app", "orders", 64)
        assert isinstance(row["applied_at"], datetime)
        assert row["applied_at"].tzinfo is not None

    async def test_failing_migration_leaves_nothing_of_itself(
        self, db: PostgresDatabase, mdir: Path
    ) -> None:
        """A failing statement rolls back its file's DDL too; the error names the file,
        the statement number and line, and carries the SQLSTATE."""
        (mdir / "0004_broken.sql").write_text(
            "CREATE TABLE half (id BIGINT);\nINSERT INTO half (id) VALUES (1);\n"
            "ALTER TABLE no_such_table ADD COLUMN x TEXT;\n"
        )
        with pytest.raises(MigrationError) as caught:
            await migrate(db, mdir, logger=RecordingLogger())
        assert "0004_broken.sql (namespace app) failed at statement 3 (line 3)" in str(caught.value)
        assert caught.value.details["sqlstate"] == "42P01"
        assert await db.fetch_value("SELECT to_regclass('half')") is None
        assert await recorded(db) == ["0001", "0002", "0003"]

    async def test_changed_applied_file_is_refused(self, db: PostgresDatabase, mdir: Path) -> None:
        """An applied file edited afterwards is a ConfigurationError naming it."""
        await migrate(db, mdir, logger=RecordingLogger())
        with (mdir / "0002_orders.sql").open("a") as f:
            f.write("-- edited\n")
        with pytest.raises(ConfigurationError, match=r"0002_orders\.sql \(namespace app\)"):
            await migrate(db, mdir, logger=RecordingLogger())

    async def test_namespaces_are_separate(self, db: PostgresDatabase, tmp_path: Path) -> None:
        """Version 0001 of 'hexinfra' and of 'app' are both applied, each once."""
        for namespace in ("hexinfra", "app"):
            directory = tmp_path / namespace
            directory.mkdir()
            (directory / "0001_t.sql").write_text(f"CREATE TABLE {namespace}_t (id BIGINT);")
            assert await migrate(db, directory, logger=RecordingLogger(), namespace=namespace) == [
                "0001"
            ]
        assert await recorded(db, "hexinfra") == await recorded(db, "app") == ["0001"]

    async def test_percent_is_a_literal(self, db: PostgresDatabase, tmp_path: Path) -> None:
        """'%' in a file reaches PostgreSQL as '%' (no parameters are bound)."""
        (tmp_path / "0001_p.sql").write_text(
            "CREATE TABLE p (t TEXT);\nINSERT INTO p (t) VALUES ('50%'), ('x');\n"
            "DELETE FROM p WHERE t NOT LIKE '%\\%';"
        )
        await migrate(db, tmp_path, logger=RecordingLogger())
        assert await db.fetch_all("SELECT t FROM p") == [{"t": "50%"}]

    async def test_a_migrations_session_settings_do_not_reach_the_pool(
        self, database_url: str, tmp_path: Path
    ) -> None:
        """A plain SET in a migration (search_path, lock_timeout) is reset before its
        pooled connection goes back to the service."""
        (tmp_path / "0001_s.sql").write_text(
            "SET lock_timeout = '3s';\nSET search_path TO nowhere, public;\n"
            "CREATE TABLE s (n INTEGER);"
        )
        db = make_db(database_url, pool_min_size=1, pool_max_size=1)
        await db.connect()
        try:
            await migrate(db, tmp_path, logger=RecordingLogger())
            row = await db.fetch_one(
                "SELECT current_setting('lock_timeout') AS lt, current_setting('search_path') AS sp"
            )
        finally:
            await db.close()
        assert row == {"lt": "0", "sp": '"$user", public'}

    async def test_status_reads_without_writing(self, db: PostgresDatabase, mdir: Path) -> None:
        """status() on a fresh database lists pending files and creates no table."""
        states = await status(db, mdir)
        assert {s.state for s in states} == {"pending"}
        assert await db.fetch_value("SELECT to_regclass('hexinfra_migrations')") is None
        await migrate(db, mdir, logger=RecordingLogger())
        assert {s.state for s in await status(db, mdir)} == {"applied"}


class TestConcurrentReplicas:
    """Replicas starting together migrate once: the advisory lock serializes them."""

    async def test_five_processes_apply_each_migration_once(
        self, database_url: str, mdir: Path, tmp_path: Path
    ) -> None:
        """Five `python -m adapters.migrations up` processes, all waiting on the lock at
        once: all exit 0, each file ran once, one row per version."""
        db = make_db(database_url)
        await db.connect()
        env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "warning"}
        try:
            async with db.transaction() as tx:
                # Hold the migrations table lock so that all five start, then queue on it.
                await tx.execute("SELECT pg_advisory_xact_lock(%s)", (_TABLE_LOCK,))
                procs = [
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        *("-m", "adapters.migrations", "up", "--dir", str(mdir)),
                        cwd=tmp_path,
                        env=env,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                    )
                    for _ in range(5)
                ]

                async def all_waiting() -> bool:
                    for p in procs:
                        if p.returncode is not None:
                            raise AssertionError(f"exited early: {await p.communicate()!r}")
                    waiting = await db.fetch_value(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                        " AND NOT granted AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                    return bool(waiting == 5)

                await wait_until_async(all_waiting, timeout=60, what="five processes waiting")
            outputs = []
            for p in procs:
                out, err = await asyncio.wait_for(p.communicate(), timeout=60)
                outputs.append((out.decode(), err.decode()))
            codes = [p.returncode for p in procs]
            assert codes == [0] * 5, outputs
            applied = sorted(
                v
                for out, _ in outputs
                if out.startswith("applied ")
                for v in out.removeprefix("applied ").strip().split(", ")
            )
            assert applied == ["0001", "0002", "0003"], outputs
            assert sum(out.strip() == "up to date" for out, _ in outputs) >= 2
            assert await runs(db) == ["0001", "0002", "0003"]
            assert await recorded(db) == ["0001", "0002", "0003"]
        finally:
            await db.close()

    async def test_concurrent_migrate_under_serializable_default(
        self, database_url: str, mdir: Path
    ) -> None:
        """With default_transaction_isolation = serializable, five concurrent migrate()
        calls still apply each file once (the runner reads after the lock in READ
        COMMITTED)."""
        admin = make_db(database_url)
        await admin.connect()
        name = await admin.fetch_value("SELECT current_database()")
        await admin.execute(
            f'ALTER DATABASE "{name}" SET default_transaction_isolation = serializable'
        )
        await admin.close()
        dbs = [make_db(database_url, pool_max_size=1) for _ in range(5)]
        for d in dbs:
            await d.connect()
        try:
            results = await asyncio.gather(
                *(migrate(d, mdir, logger=RecordingLogger()) for d in dbs)
            )
            assert sorted(v for r in results for v in r) == ["0001", "0002", "0003"]
            assert await runs(dbs[0]) == ["0001", "0002", "0003"]
            level = await dbs[0].fetch_value("SHOW default_transaction_isolation")
            assert level == "serializable"
        finally:
            for d in dbs:
                await d.close()


class TestShell:
    """python -m adapters.migrations against a real server."""

    def run(self, url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "adapters.migrations", *args],
            cwd=cwd,
            env={**os.environ, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_up_then_status(self, database_url: str, mdir: Path, tmp_path: Path) -> None:
        """up prints the versions it applied; status lists each as applied; both exit 0."""
        up = self.run(database_url, tmp_path, "up", "--dir", str(mdir))
        assert (up.returncode, up.stdout) == (0, "applied 0001, 0002, 0003\n"), up.stderr
        st = self.run(database_url, tmp_path, "status", "--dir", str(mdir))
        assert st.returncode == 0, st.stderr
        lines = [line.split("\t")[:3] for line in st.stdout.splitlines()]
        assert lines == [
            ["0001", "applied", "create_runs"],
            ["0002", "applied", "orders"],
            ["0003", "applied", "function"],
        ]

    def test_failing_migration_exits_1_with_one_line(
        self, database_url: str, mdir: Path, tmp_path: Path
    ) -> None:
        """A failing file: exit 1 and one stderr line naming the file and statement."""
        (mdir / "0004_bad.sql").write_text("SELECT 1;\nSELEC 2;\n")
        up = self.run(database_url, tmp_path, "up", "--dir", str(mdir), "--namespace", "svc")
        assert up.returncode == 1
        err = up.stderr.strip().splitlines()
        assert len(err) == 1, up.stderr
        assert err[0].startswith("error: migration 0004_bad.sql (namespace svc) failed at")
        assert "statement 2 (line 2)" in err[0]
