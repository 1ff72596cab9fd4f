"""build_infrastructure wraps the ports in adapters.telemetry when OTEL_ENABLED says so."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from adapters.memory import InMemoryEventBus, SqliteDatabase
from adapters.telemetry import (
    TracedDatabase,
    TracedPublisher,
    TracedSubscriber,
    expose_current_context,
    join_logs_to_traces,
)
from testing.fakes import RecordingLogger


class TestBuildInfrastructure:
    async def test_otel_enabled_wraps_the_ports(self) -> None:
        from adapters.bootstrap import build_infrastructure
        from adapters.memory import InMemoryConfig

        try:
            infra = build_infrastructure(
                InMemoryConfig({"INFRA_ADAPTERS": "memory", "OTEL_ENABLED": "true"}),
                logger=RecordingLogger(),
            )
            assert isinstance(infra.database, TracedDatabase)
            assert isinstance(infra.publisher, TracedPublisher)
            assert isinstance(infra.subscriber, TracedSubscriber)
            async with infra:
                assert await infra.database.fetch_value("SELECT 1") == 1
                assert (await infra.health()).healthy
        finally:
            join_logs_to_traces(False)
            expose_current_context(False)

    async def test_otel_enabled_samples_the_outbox_lag_while_running(self) -> None:
        """With telemetry on, the outbox relay component carries the
        ``hexinfra.outbox.lag`` gauge, sampling while the infrastructure runs and
        stopped when it closes."""
        from adapters.bootstrap import build_infrastructure
        from adapters.memory import InMemoryConfig
        from adapters.telemetry import OutboxLagGauge

        try:
            infra = build_infrastructure(
                InMemoryConfig({"INFRA_ADAPTERS": "memory", "OTEL_ENABLED": "true"}),
                logger=RecordingLogger(),
            )
            [relay] = [c for name, c in infra._components if name == "outbox"]
            gauge = relay.lag_gauge  # type: ignore[attr-defined]
            assert isinstance(gauge, OutboxLagGauge)
            async with infra:
                assert gauge._task is not None
                assert not gauge._task.done()
                assert await gauge.sample() == 0.0
            assert gauge._task is None
        finally:
            join_logs_to_traces(False)
            expose_current_context(False)

    async def test_a_given_telemetry_records_to_its_own_providers(self) -> None:
        """``build_infrastructure(telemetry=...)`` wraps the ports with that
        Telemetry's tracer and meter (no global provider is touched), and
        ``OTEL_ENABLED=false`` still turns it off."""
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        from adapters.bootstrap import build_infrastructure
        from adapters.memory import InMemoryConfig
        from adapters.telemetry import Telemetry

        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        meter_provider = MeterProvider(metric_readers=[reader])
        telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        try:
            infra = build_infrastructure(
                InMemoryConfig({"INFRA_ADAPTERS": "memory"}),
                logger=RecordingLogger(),
                telemetry=telemetry,
            )
            async with infra:
                assert await infra.database.fetch_value("SELECT 1") == 1
            assert [s.name for s in exporter.get_finished_spans()] == ["SELECT"]
            data = reader.get_metrics_data()
            assert data is not None
            names = {
                m.name
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }
            assert "hexinfra.db.query.duration" in names
            off = build_infrastructure(
                InMemoryConfig({"INFRA_ADAPTERS": "memory", "OTEL_ENABLED": "false"}),
                logger=RecordingLogger(),
                telemetry=telemetry,
            )
            assert isinstance(off.database, SqliteDatabase)
        finally:
            join_logs_to_traces(False)
            expose_current_context(False)
            tracer_provider.shutdown()
            meter_provider.shutdown()

    def test_otel_disabled_or_unset_wraps_nothing(self) -> None:
        from adapters.bootstrap import build_infrastructure
        from adapters.memory import InMemoryConfig

        for values in ({"OTEL_ENABLED": "false"}, {}):
            infra = build_infrastructure(
                InMemoryConfig({"INFRA_ADAPTERS": "memory", **values}), logger=RecordingLogger()
            )
            assert isinstance(infra.database, SqliteDatabase)
            assert isinstance(infra.publisher, InMemoryEventBus)
            [relay] = [c for name, c in infra._components if name == "outbox"]
            assert relay.lag_gauge is None  # type: ignore[attr-defined]
