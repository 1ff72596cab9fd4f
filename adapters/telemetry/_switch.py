"""Is an OpenTelemetry SDK configured in this process?"""

from __future__ import annotations

from opentelemetry import trace

__all__ = ["sdk_configured"]


def sdk_configured() -> bool:
    """True when the global TracerProvider was set (to an SDK's), not the API's
    default proxy or no-op provider."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
