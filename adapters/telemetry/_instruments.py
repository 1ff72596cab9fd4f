"""The tracer, meter, propagator and metric instruments shared by the wrappers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from adapters._trace_carrier import Carrier

__all__ = ["Telemetry", "SCOPE", "inject", "extract"]

SCOPE: Final = "hexinfra"
"""The instrumentation scope of every span and instrument."""

_PROPAGATOR: Final = TraceContextTextMapPropagator()


class Telemetry:
    """A tracer and the ``hexinfra.*`` instruments, from the given providers (the global
    ones when ``None``)."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self.meter = meter
        self.query_duration = meter.create_histogram(
            "hexinfra.db.query.duration",
            unit="s",
            description="Duration of database statements",
        )
        self.published = meter.create_counter(
            "hexinfra.events.published", unit="{event}", description="Events published"
        )
        self.handled = meter.create_counter(
            "hexinfra.events.handled",
            unit="{event}",
            description="Handler runs by outcome (ack, retry, dead_letter)",
        )
        self.handler_duration = meter.create_histogram(
            "hexinfra.events.handler.duration",
            unit="s",
            description="Duration of every handler run",
        )
        self.dead_letters = meter.create_counter(
            "hexinfra.events.dead_letters",
            unit="{event}",
            description="Events dead-lettered after their handler ran",
        )


def inject() -> Carrier | None:
    """The current span's context as ``(traceparent, tracestate)``; ``None`` outside
    a valid span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    parent = carrier.get("traceparent")
    if not parent:
        return None
    return parent, carrier.get("tracestate") or None


def extract(carrier: Carrier | None) -> trace.SpanContext | None:
    """The remote span context in ``carrier``; ``None`` when absent or malformed."""
    if carrier is None:
        return None
    headers: Mapping[str, str] = (
        {"traceparent": carrier[0], "tracestate": carrier[1]}
        if carrier[1]
        else {"traceparent": carrier[0]}
    )
    ctx = _PROPAGATOR.extract(headers, context=otel_context.Context())
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None
