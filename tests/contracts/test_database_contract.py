"""The database contract suite, run on SqliteDatabase (the fake) and PostgresDatabase."""

from __future__ import annotations

import pytest

from adapters.memory import SqliteDatabase
from adapters.postgres import PostgresDatabase, PostgresSettings
from testing.contracts.database import DatabaseAdapter, DatabaseContract
from testing.fakes import RecordingLogger


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def database_adapter(request: pytest.FixtureRequest) -> DatabaseAdapter:
    """Each adapter of the Database port, built fresh (unconnected) for each use."""
    if request.param == "sqlite":
        return DatabaseAdapter("sqlite", SqliteDatabase, transactions_run_concurrently=False)
    settings = PostgresSettings(
        url=request.getfixturevalue("postgres_url"),
        pool_min_size=1,
        pool_max_size=10,
        pool_timeout=5.0,
        connect_retries=2,
        connect_backoff=0.1,
    )
    return DatabaseAdapter("postgres", lambda: PostgresDatabase(settings, RecordingLogger()))


class TestDatabaseContract(DatabaseContract):
    """The Database port's contract, on every adapter."""
