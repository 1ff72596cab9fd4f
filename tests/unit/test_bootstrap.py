"""adapters.bootstrap: choosing adapters, connecting in order, closing in reverse, health."""

from __future__ import annotations

import asyncio

import pytest

from adapters.bootstrap import Infrastructure, adapter_mode, build_infrastructure
from adapters.memory import InMemoryConfig, InMemoryEventBus, SqliteDatabase
from domain_errors import ConfigurationError, ServiceUnavailable
from ports import Event
from testing.fakes import FakeClock, RecordingLogger


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
            ({"DATABASE_URL": "postgresql://x"}, "memory"),
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
        """A typo in INFRA_ADAPTERS names the key."""
        with pytest.raises(ConfigurationError, match="INFRA_ADAPTERS"):
            adapter_mode(InMemoryConfig({"INFRA_ADAPTERS": "postgres"}))

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
            assert set(report.to_dict()["components"]) == {"database", "events"}
        log.assert_logged("infrastructure connected", mode="memory")
        after = await infra.health()
        assert not after.healthy

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
