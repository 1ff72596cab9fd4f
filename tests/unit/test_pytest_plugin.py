"""The pytest plugin as a user's test run sees it."""

from __future__ import annotations

import time

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


class TestLeftOvers:
    """What an interrupted run left on a shared server is recognised by its stamp."""

    def test_only_stamped_names_older_than_the_limit(self) -> None:
        """Stamped names older than an hour are left-overs; fresh ones, and names
        hexinfra did not make, never are."""
        from testing import pytest_plugin

        old = int(time.time()) - 7200
        fresh = int(time.time()) - 60
        names = [
            f"hexinfra_tpl_{old}_0123456789ab",
            f"hexinfra_t_{old}_0123456789ab",
            f"HEXINFRA_T_{old}_0123456789ab_DEAD",
            f"KV_HEXINFRA_T_{old}_0123456789ab_ATTEMPTS",
            f"hexinfra_t_{fresh}_0123456789ab",
            "t_0123456789abcdef",
            "orders",
            f"app_{old}_0123456789ab",
        ]
        assert pytest_plugin._left_over(names) == names[:4]

    def test_stamped_names_carry_the_time(self) -> None:
        """A new name carries the current time, so a later run can age it."""
        from testing import pytest_plugin

        name = pytest_plugin._stamped("hexinfra_t_")
        assert pytest_plugin._left_over([name]) == []
        assert pytest_plugin._left_over([name], older_than=-1) == [name]
