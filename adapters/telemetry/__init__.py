"""OpenTelemetry around the ports: spans, trace context on events, metrics (ADR 0031).

- :class:`TracedDatabase`, :class:`TracedPublisher`, :class:`TracedSubscriber` wrap any
  implementation of their port (PostgreSQL, NATS, the in-memory fakes) with spans named
  and attributed by the semantic conventions, and record the ``hexinfra.*`` metrics.
- The publisher's span context travels with each event as ``ce-traceparent`` /
  ``ce-tracestate`` (the CloudEvents distributed-tracing extension) and the handler's
  process span continues it.
- :class:`TracedASGIMiddleware` opens the HTTP server span (unless an OpenTelemetry
  ASGI instrumentation already did).
- :func:`join_logs_to_traces` makes every log line written inside a span carry
  ``trace_id`` and ``span_id``.

Only ``opentelemetry-api`` is imported (extra ``hexinfra[otel]``); the application
configures the SDK and exporters. Without the API, importing this package is a
``ConfigurationError`` naming the extra; :func:`telemetry_wanted` decides whether
``build_infrastructure`` wraps the ports.
"""

from __future__ import annotations

from adapters._extras import require_extra

require_extra("otel", "adapters.telemetry")

from ._asgi import TracedASGIMiddleware
from ._database import TracedDatabase, db_system, operation_name
from ._events import TracedPublisher, TracedSubscriber
from ._instruments import SCOPE, Telemetry
from ._logs import expose_current_context, join_logs_to_traces, trace_ids
from ._outbox import OutboxLagGauge
from ._switch import sdk_configured

__all__ = [
    "TracedDatabase",
    "TracedPublisher",
    "TracedSubscriber",
    "TracedASGIMiddleware",
    "OutboxLagGauge",
    "Telemetry",
    "SCOPE",
    "join_logs_to_traces",
    "expose_current_context",
    "trace_ids",
    "sdk_configured",
    "db_system",
    "operation_name",
]
