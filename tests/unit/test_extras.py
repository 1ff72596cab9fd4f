"""A real adapter whose driver is not installed says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adapters import _extras
from domain_errors import ConfigurationError


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """require_extra raises a ConfigurationError naming the module and the pip line."""
    monkeypatch.setitem(_extras.EXTRAS, "postgres", ("psycopg", "no_such_driver_xyz"))
    with pytest.raises(ConfigurationError, match=r"pip install 'hexinfra\[postgres\]'") as err:
        _extras.require_extra("postgres", "PostgresDatabase")
    assert err.value.details == {"extra": "postgres", "missing": ["no_such_driver_xyz"]}


def test_installed_drivers_pass() -> None:
    """With the drivers installed (the dev extra), nothing is raised."""
    _extras.require_extra("postgres", "PostgresDatabase")
    _extras.require_extra("nats", "NatsConnection")


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [("adapters.postgres", "psycopg", "postgres"), ("adapters.nats_events", "nats", "nats")],
)
def test_importing_an_adapter_without_its_driver(module: str, blocked: str, extra: str) -> None:
    """Importing a real adapter in a process where its driver is missing fails with the
    ConfigurationError, not a bare ImportError from inside the adapter."""
    script = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from domain_errors import ConfigurationError\n"
        "try:\n"
        f"    import {module}\n"
        "except ConfigurationError as exc:\n"
        "    print('CONFIG', exc)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("CONFIG")
    assert f"pip install 'hexinfra[{extra}]'" in ran.stdout
