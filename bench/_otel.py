"""OpenTelemetry set-ups shared by the benches (issue 15, point 5; ADR 0031).

- :func:`noop_telemetry`: what ``build_infrastructure`` wraps the ports with when
  ``OTEL_ENABLED=true`` and no SDK is configured: ``Telemetry()`` on the global
  providers, i.e. the API's proxies delegating to its no-op tracer and meter.
- :func:`sdk_providers` / :func:`sdk_telemetry`: an SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` on an exporter that drops everything (so we pay for making,
  queueing and batching spans, never for I/O), and an SDK ``MeterProvider`` with an
  in-memory reader that is never collected (instruments aggregate, nothing exports).
- :func:`check_off_is_unwrapped`: ``build_infrastructure`` with ``OTEL_ENABLED=false``
  hands out the bare adapters (nothing wrapped), so "telemetry off" in the benches is
  the plain adapter object; raises if that ever changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from adapters.telemetry import Telemetry


class DropExporter(SpanExporter):
    """Accepts every batch and keeps nothing."""

    def __init__(self) -> None:
        self.spans = 0
        self.by_scope: Counter[str] = Counter()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        for span in spans:
            scope = span.instrumentation_scope
            self.by_scope[scope.name if scope is not None else "?"] += 1
        return SpanExportResult.SUCCESS


class SdkProviders:
    """An SDK tracer provider (batching onto a :class:`DropExporter`) and meter provider."""

    def __init__(self) -> None:
        self.exporter = DropExporter()
        self.tracer_provider = TracerProvider()
        # A queue large enough that no span is dropped for want of room: a dropped span
        # would make the traced side look cheaper than it is.
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(self.exporter, max_queue_size=1_000_000, max_export_batch_size=4096)
        )
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def sdk_providers() -> SdkProviders:
    return SdkProviders()


def sdk_telemetry(providers: SdkProviders | None = None) -> Telemetry:
    providers = providers or sdk_providers()
    return Telemetry(
        tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider
    )


def noop_telemetry() -> Telemetry:
    """The global providers; the bench never sets them, so these are the API's
    proxies over its no-op implementations (as in a service with OTEL_ENABLED=true
    and no SDK configured)."""
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        raise RuntimeError("a global TracerProvider is set: the no-op row would not be no-op")
    return Telemetry()


def check_off_is_unwrapped() -> str:
    """``build_infrastructure`` (real mode, OTEL_ENABLED=false; nothing is connected)
    returns the bare PostgresDatabase, NatsPublisher and NatsSubscriber, and with
    OTEL_ENABLED=true the Traced* wrappers (the hooks that build installs are removed
    again). Returns a one-line summary."""
    from adapters.bootstrap import build_infrastructure
    from adapters.memory import InMemoryConfig
    from adapters.nats_events import NatsPublisher, NatsSubscriber
    from adapters.postgres import PostgresDatabase
    from adapters.telemetry import TracedDatabase, TracedPublisher, TracedSubscriber
    from testing.fakes import RecordingLogger

    def build(enabled: str) -> tuple[type, type, type]:
        config = InMemoryConfig(
            {
                "DATABASE_URL": "postgresql://bench@127.0.0.1:1/bench",
                "NATS_URL": "nats://127.0.0.1:1",
                "EVENTS_OUTBOX": "false",
                "OTEL_ENABLED": enabled,
            }
        )
        infra = build_infrastructure(config, logger=RecordingLogger(level="error"))
        return type(infra.database), type(infra.publisher), type(infra.subscriber)

    from adapters.telemetry import expose_current_context, join_logs_to_traces

    off = build("false")
    try:
        on = build("true")
    finally:
        # traced_ports() installed process-wide hooks (log lines, outbox context): the
        # benches measure the ports without them, as a service with telemetry off runs.
        join_logs_to_traces(False)
        expose_current_context(False)
    if off != (PostgresDatabase, NatsPublisher, NatsSubscriber):
        raise RuntimeError(f"OTEL_ENABLED=false wraps something: {off}")
    if on != (TracedDatabase, TracedPublisher, TracedSubscriber):
        raise RuntimeError(f"OTEL_ENABLED=true does not wrap as expected: {on}")
    return "OTEL_ENABLED=false builds " + ", ".join(t.__name__ for t in off) + " (unwrapped)"
