"""The pytest plugin as a user's test run sees it."""

from __future__ import annotations

import pytest

USER_TEST = """
def test_urls(postgres_url, nats_url):
    assert postgres_url == "postgresql://me@db.example:5432/app"
    assert nats_url == "nats://broker.example:4222"
"""


def test_fixtures_use_urls_from_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HEXINFRA_TEST_DATABASE_URL and HEXINFRA_TEST_NATS_URL set, the fixtures
    yield them and start nothing; the application's DATABASE_URL / NATS_URL (a
    developer's own database) are not read."""
    monkeypatch.setenv("HEXINFRA_TEST_DATABASE_URL", "postgresql://me@db.example:5432/app")
    monkeypatch.setenv("HEXINFRA_TEST_NATS_URL", "nats://broker.example:4222")
    monkeypatch.setenv("DATABASE_URL", "postgresql://developer@prod.example:5432/mine")
    monkeypatch.setenv("NATS_URL", "nats://developer.example:4222")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(USER_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "ephemeral servers started" not in result.stdout.str()


def test_plugin_is_registered_by_entry_point(pytestconfig: pytest.Config) -> None:
    """The plugin is loaded through the pytest11 entry point named hexinfra."""
    assert pytestconfig.pluginmanager.has_plugin("hexinfra")
