"""TracedASGIMiddleware: the HTTP edge's server span (unless one is already open)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._instruments import Telemetry

__all__ = ["TracedASGIMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PROPAGATOR: Final = TraceContextTextMapPropagator()


def _carrier(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        key = name.decode("latin-1").lower()
        if key in ("traceparent", "tracestate"):
            headers[key] = value.decode("latin-1")
    return headers


class TracedASGIMiddleware:
    """A SERVER span per HTTP request (``http.request.method``, ``url.path``,
    ``url.scheme``, ``http.route`` when the framework sets one,
    ``http.response.status_code``; never query strings, headers or bodies), continuing
    the caller's ``traceparent``. When a span of kind SERVER is already current (an
    OpenTelemetry ASGI instrumentation opened it), it adds nothing. Place it outside
    ``RequestContextMiddleware`` so that the access line carries the trace ids."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.app = app
        self._tel = telemetry or Telemetry(
            tracer_provider=tracer_provider, meter_provider=meter_provider
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _server_span_open():
            await self.app(scope, receive, send)
            return
        sent = str(scope.get("method", "GET"))
        method = sent if sent in _KNOWN_METHODS else "_OTHER"
        parent = _PROPAGATOR.extract(_carrier(scope), context=otel_context.Context())
        attributes = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
        }
        if method == "_OTHER":
            # A client's made-up method never becomes a span name (their number is
            # unbounded); the conventions keep it beside, cut short.
            attributes["http.request.method_original"] = sent[:32]
            method = "HTTP"
        status: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        with self._tel.tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
                if status:
                    span.set_attribute("http.response.status_code", status[0])
                    if status[0] >= 500:
                        span.set_status(Status(StatusCode.ERROR))


_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def _server_span_open() -> bool:
    span = trace.get_current_span()
    return span.get_span_context().is_valid and getattr(span, "kind", None) is SpanKind.SERVER
