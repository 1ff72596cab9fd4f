"""Log lines join traces: ``trace_id`` / ``span_id`` of the current span."""

from __future__ import annotations

from opentelemetry import trace

from adapters import _log_fields, _trace_carrier

from ._instruments import inject

__all__ = ["trace_ids", "join_logs_to_traces", "expose_current_context"]


def trace_ids() -> tuple[str, str] | None:
    """The current span's ids in hex (32 and 16 digits), or ``None`` outside a span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def join_logs_to_traces(enabled: bool = True) -> None:
    """Make every log line written inside a span carry ``trace_id`` and ``span_id``
    (StructlogLogger and RecordingLogger); ``False`` undoes it."""
    _log_fields.set_trace_hook(trace_ids if enabled else None)


def expose_current_context(enabled: bool = True) -> None:
    """Let ``adapters._trace_carrier.current()`` give the current span's context (for
    the outbox, which stores it with each row); ``False`` undoes it."""
    _trace_carrier.set_current_hook(inject if enabled else None)
