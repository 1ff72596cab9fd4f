"""adapters.bootstrap: choosing adapters, connecting in order, closing in reverse, health."""

from __future__ import annotations

import asyncio

import pytest

from adapters.bootstrap import Infrastructure, adapter_mode, build_infrastructure
from adapters.env_config import EnvConfig
from adapters.memory import InMemoryConfig, InMemoryEventBus, SqliteDatabase
from adapters.outbox import OutboxRelay, SqlOutbox
from domain_errors import ConfigurationError, ServiceUnavailable
from ports import Event
from testing.fakes import FakeClock, RecordingLogger
from tests.helpers import wait_until


class Part:
    """A component that records what happened to it, and can be told to fail."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        fail_connect: bool = False,
        fail_close: bool = False,
        hang_health: bool = False,
    ) -> None:
        self.name, self.journal = name, journal
        self.fail_connect, self.fail_close, self.hang_health = fail_connect, fail_close, hang_health

    async def connect(self) -> None:
        self.journal.append(f"connect {self.name}")
        if self.fail_connect:
            raise ServiceUnavailable(f"{self.name} is down")

    async def health_check(self) -> None:
        if self.hang_health:
            await asyncio.Event().wait()
        if self.fail_connect:
            raise ServiceUnavailable("down")

    async def close(self, timeout: float = 1.0) -> None:
        self.journal.append(f"close {self.name}")
        if self.fail_close:
            raise RuntimeError("close failed")


def infra_of(*parts: Part, log: RecordingLogger | None = None) -> Infrastructure:
    bus = InMemoryEventBus()
    return Infrastructure(
        config=InMemoryConfig(),
        logger=log if log is not None else RecordingLogger(),
        clock=FakeClock(),
        database=SqliteDatabase(),
        publisher=bus,
        subscriber=bus,
        mode="memory",
        components=[(p.name, p) for p in parts],
        health_timeout=0.2,
    )


class TestChoosingAdapters:
    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ({}, "memory"),
            ({"APP_ENV": "staging"}, "memory"),
            ({"DATABASE_URL": "postgresql://x", "INFRA_ADAPTERS": "memory"}, "memory"),
            ({"APP_ENV": "production", "INFRA_ADAPTERS": "memory"}, "memory"),
            ({"INFRA_ADAPTERS": " "}, "memory"),
            ({"DATABASE_URL": "postgresql://x", "NATS_URL": "nats://y"}, "real"),
            (
                {
                    "DATABASE_URL": "postgresql://x",
                    "NATS_URL": "nats://y",
                    "INFRA_ADAPTERS": "Memory",
                },
                "memory",
            ),
            ({"INFRA_ADAPTERS": "real"}, "real"),
        ],
    )
    def test_mode_from_config(self, values: dict[str, str], expected: str) -> None:
        """INFRA_ADAPTERS wins; unset, real only when both URLs are set."""
        assert adapter_mode(InMemoryConfig(values)) == expected

    def test_unknown_mode_is_a_configuration_error(self) -> None:
        """A typo in INFRA_ADAPTERS names the key and the accepted values, not the value."""
        with pytest.raises(ConfigurationError, match="INFRA_ADAPTERS") as info:
            adapter_mode(InMemoryConfig({"INFRA_ADAPTERS": "postgres"}))
        assert "'memory' or 'real'" in str(info.value)
        assert "postgres" not in str(info.value)
        assert info.value.details["key"] == "INFRA_ADAPTERS"

    @pytest.mark.parametrize(
        ("values", "missing"),
        [
            ({"DATABASE_URL": "postgresql://x", "NAST_URL": "nats://y"}, "NATS_URL"),
            ({"NATS_URL": "nats://y", "DATABSE_URL": "postgresql://x"}, "DATABASE_URL"),
            ({"DATABASE_URL": "", "APP_ENV": "dev"}, "NATS_URL"),
        ],
    )
    def test_one_url_without_the_other_fails_loud(
        self, values: dict[str, str], missing: str
    ) -> None:
        """A misspelt URL key never puts a service on in-memory storage: the missing key
        is named, and build_infrastructure refuses too (no URL value in the message)."""
        with pytest.raises(ConfigurationError) as info:
            adapter_mode(InMemoryConfig(values))
        assert info.value.details == {"key": missing, "missing": [missing]}
        assert f"setting {missing} is missing" in str(info.value)
        with pytest.raises(ConfigurationError, match=missing) as built:
            build_infrastructure(InMemoryConfig(values), logger=RecordingLogger())
        assert "postgresql://x" not in str(built.value)
        assert "nats://y" not in str(built.value)

    def test_a_url_given_as_a_default_counts(self) -> None:
        """A URL from the defaults layer is set as far as the choice goes."""
        config = InMemoryConfig({"NATS_URL": "nats://y"}, defaults={"DATABASE_URL": "pg://"})
        assert adapter_mode(config) == "real"
        with pytest.raises(ConfigurationError, match="NATS_URL"):
            adapter_mode(InMemoryConfig(defaults={"DATABASE_URL": "pg://"}))

    @pytest.mark.parametrize("app_env", ["production", "PRODUCTION", "prod"])
    def test_no_urls_in_production_fails_loud(self, app_env: str) -> None:
        """Without URLs in production, no silent memory mode: both keys are named."""
        with pytest.raises(ConfigurationError) as info:
            adapter_mode(InMemoryConfig({"APP_ENV": app_env}))
        assert "DATABASE_URL" in str(info.value)
        assert "NATS_URL" in str(info.value)
        assert info.value.details["missing"] == ["DATABASE_URL", "NATS_URL"]

    def test_env_config_production_from_its_environment(self) -> None:
        """EnvConfig's environment (APP_ENV, read unprefixed) counts, with a prefix too;
        the keys named carry the prefix."""
        config = EnvConfig(prefix="APP", env_file=None, environ={"APP_ENV": "production"})
        with pytest.raises(ConfigurationError) as info:
            adapter_mode(config)
        assert info.value.details["missing"] == ["APP_DATABASE_URL", "APP_NATS_URL"]
        half = EnvConfig(prefix="APP", env_file=None, environ={"APP_NATS_URL": "nats://y"})
        with pytest.raises(ConfigurationError, match="APP_DATABASE_URL"):
            adapter_mode(half)

    def test_real_mode_names_every_missing_url(self) -> None:
        """Forcing real adapters without URLs names both missing keys at once."""
        with pytest.raises(ConfigurationError) as info:
            build_infrastructure(InMemoryConfig(), memory=False, logger=RecordingLogger())
        assert "DATABASE_URL" in str(info.value)
        assert "NATS_URL" in str(info.value)

    def test_memory_mode_builds_fakes_without_io(self) -> None:
        """Memory mode builds SqliteDatabase and one InMemoryEventBus for both roles."""
        infra = build_infrastructure(InMemoryConfig({"SERVICE_NAME": "svc"}))
        assert infra.mode == "memory"
        assert isinstance(infra.database, SqliteDatabase)
        assert isinstance(infra.publisher, InMemoryEventBus)
        assert infra.publisher is infra.subscriber


class TestLifecycle:
    async def test_memory_infrastructure_works_end_to_end(self) -> None:
        """async with connects everything; the adapters work; exit closes them."""
        log = RecordingLogger()
        async with build_infrastructure(InMemoryConfig(), logger=log) as infra:
            assert await infra.database.fetch_value("SELECT 41 + 1") == 42
            ack = await infra.publisher.publish(Event(type="t.x", source="s", organization_id="o"))
            assert ack.sequence == 1
            report = await infra.health()
            assert report.healthy
            assert set(report.to_dict()["components"]) == {"database", "events", "outbox"}
        log.assert_logged("infrastructure connected", mode="memory")
        assert report.mode == "memory"
        assert report.to_dict()["mode"] == "memory"
        after = await infra.health()
        assert not after.healthy

    async def test_memory_mode_warns_at_start(self) -> None:
        """Memory mode says so at warning level when it starts, with the reason; building
        alone logs nothing (no I/O, no noise)."""
        log = RecordingLogger()
        infra = build_infrastructure(InMemoryConfig(), logger=log)
        assert not [r for r in log.records if r.level == "warning"]
        async with infra:
            log.assert_logged(
                "infrastructure on in-memory adapters: nothing is stored outside this "
                "process, every write is lost at restart",
                level="warning",
                mode="memory",
                reason="neither DATABASE_URL nor NATS_URL is set",
            )
        forced = RecordingLogger()
        async with build_infrastructure(InMemoryConfig(), memory=True, logger=forced):
            assert any(r.level == "warning" for r in forced.records)

    async def test_connects_in_order_and_closes_in_reverse(self) -> None:
        """Components connect in order and close in reverse order."""
        journal: list[str] = []
        async with infra_of(Part("db", journal), Part("events", journal)):
            assert journal == ["connect db", "connect events"]
        assert journal[2:] == ["close events", "close db"]

    async def test_failed_connect_closes_what_was_opened(self) -> None:
        """When the second component fails to connect, the first is closed; nothing leaks."""
        journal: list[str] = []
        log = RecordingLogger()
        infra = infra_of(Part("db", journal), Part("events", journal, fail_connect=True), log=log)
        with pytest.raises(ServiceUnavailable, match="events is down"):
            async with infra:
                pytest.fail("the body must not run")
        assert journal == ["connect db", "connect events", "close db"]
        log.assert_logged("infrastructure connect failed", level="error", component="events")

    async def test_close_is_idempotent_and_never_raises(self) -> None:
        """A component that fails to close is logged; the others still close."""
        journal: list[str] = []
        log = RecordingLogger()
        infra = infra_of(Part("db", journal), Part("events", journal, fail_close=True), log=log)
        await infra.connect()
        await infra.close()
        await infra.close()
        assert journal.count("close db") == 1
        log.assert_logged("infrastructure close failed", component="events")

    async def test_health_reports_each_component_within_a_timeout(self) -> None:
        """A hanging check is reported down after health_timeout; a failing one by code."""
        journal: list[str] = []
        infra = infra_of(
            Part("ok", journal),
            Part("slow", journal, hang_health=True),
            Part("bad", journal, fail_connect=True),
        )
        report = await asyncio.wait_for(infra.health(), timeout=5)
        body = report.to_dict()
        assert body["healthy"] is False
        assert body["components"]["ok"]["status"] == "ok"
        assert body["components"]["slow"]["error"] == "no answer within 0.2 s"
        assert body["components"]["bad"]["error"] == "SERVICE_UNAVAILABLE"


class TestOutbox:
    async def test_outbox_relay_publishes_committed_events_in_memory(self) -> None:
        """EVENTS_OUTBOX is on by default: the tables are installed, the relay runs
        inside ``async with`` and publishes what a transaction added once it commits;
        health reports it; closing stops it first."""
        log = RecordingLogger()
        infra = build_infrastructure(InMemoryConfig(), logger=log)
        assert isinstance(infra.outbox, SqlOutbox)
        assert isinstance(infra.relay, OutboxRelay)
        bus = infra.publisher
        assert isinstance(bus, InMemoryEventBus)
        relay = infra.relay
        async with infra:
            event = Event(type="t.x", source="s", organization_id="o")
            async with infra.database.transaction() as tx:
                await infra.outbox.add(tx, event)
            await wait_until(lambda: len(bus.published) == 1, what="published by the relay")
            assert [e.id for e in bus.published] == [event.id]
            body = (await infra.health()).to_dict()["components"]["outbox"]
            assert body["status"] == "ok"  # running, lag under the threshold
            assert (body["lag_s"], body["published"], body["max_lag_s"]) == (0.0, 1, 60.0)
        assert not relay.running
        log.assert_logged("outbox relay stopped", published=1)

    async def test_relay_stops_before_the_publisher_and_database_close(self) -> None:
        """The relay is the last component: connected last, closed first."""
        infra = build_infrastructure(InMemoryConfig(), logger=RecordingLogger())
        async with infra:
            names = [name for name, _ in infra._connected]
        assert names == ["database", "events", "outbox"]

    async def test_lag_over_the_threshold_is_unhealthy(self) -> None:
        """An unsent row older than EVENTS_OUTBOX_MAX_LAG_S makes health report the
        relay down, with its lag."""
        clock = FakeClock()
        config = InMemoryConfig({"EVENTS_OUTBOX_MAX_LAG_S": "30"})
        infra = build_infrastructure(config, logger=RecordingLogger(), clock=clock)
        async with infra:
            assert infra.relay is not None
            await infra.relay.stop()  # nothing publishes from now on
            async with infra.database.transaction() as tx:
                await infra.outbox.add(tx, Event(type="t.x", source="s", organization_id="o"))
            clock.advance(31)
            report = await infra.health()
            body = report.to_dict()["components"]["outbox"]
            assert not report.healthy
            assert (body["status"], body["error"]) == ("down", "SERVICE_UNAVAILABLE")
            assert body["lag_s"] == 31.0
            await infra.relay.start()
            assert await infra.relay.run_once() == 1
            assert (await infra.health()).healthy

    async def test_events_outbox_false_runs_no_relay(self) -> None:
        """EVENTS_OUTBOX=false: no relay, no outbox tables; infra.outbox still exists."""
        infra = build_infrastructure(
            InMemoryConfig({"EVENTS_OUTBOX": "false"}), logger=RecordingLogger()
        )
        assert infra.relay is None
        assert isinstance(infra.outbox, SqlOutbox)
        async with infra:
            assert set((await infra.health()).components) == {"database", "events"}
            tables = await infra.database.fetch_value(
                "SELECT count(*) FROM sqlite_master WHERE name = 'hexinfra_outbox'"
            )
            assert tables == 0

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("EVENTS_OUTBOX", "maybe"),
            ("EVENTS_OUTBOX_POLL_S", "0"),
            ("EVENTS_OUTBOX_POLL_S", "nan"),
            ("EVENTS_OUTBOX_MAX_LAG_S", "-1"),
        ],
    )
    def test_bad_outbox_settings_fail_loud(self, key: str, value: str) -> None:
        """A malformed or out-of-range outbox setting is a ConfigurationError naming it."""
        with pytest.raises(ConfigurationError, match=key):
            build_infrastructure(InMemoryConfig({key: value}), logger=RecordingLogger())
