"""adapters.asgi through a real ASGI client against a Starlette app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from adapters.asgi import (
    DomainErrorMiddleware,
    RequestContextMiddleware,
    install_error_handling,
    trace_requests,
)
from adapters.memory import InMemoryConfig
from domain_errors import Conflict, NotFound, ServiceUnavailable
from ports.context import current_context, request_id
from testing.fakes import RecordingLogger


async def whoami(request: Request) -> JSONResponse:
    inner = await asyncio.create_task(_read_request_id())
    return JSONResponse({"request_id": request_id(), "in_task": inner})


async def _read_request_id() -> str | None:
    return request_id()


async def conflict(request: Request) -> JSONResponse:
    raise Conflict("order o-1 already exists", details={"order_id": "o-1"})


async def missing(request: Request) -> JSONResponse:
    raise NotFound("order o-9 not found")


async def down(request: Request) -> JSONResponse:
    raise ServiceUnavailable("postgres at 10.0.0.5:5432 refused (password=hunter2)")


async def crash(request: Request) -> JSONResponse:
    raise RuntimeError("SELECT * FROM users WHERE password = 'hunter2'")


async def crash_mid_stream(request: Request) -> StreamingResponse:
    async def body():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise RuntimeError("broke after the headers")

    return StreamingResponse(body())


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", headers={"x-request-id": "spoofed"})


@pytest.fixture
def log() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
def app(log: RecordingLogger) -> Starlette:
    app = Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/conflict", conflict),
            Route("/missing", missing),
            Route("/down", down),
            Route("/crash", crash),
            Route("/stream", crash_mid_stream),
            Route("/plain", plain),
        ]
    )
    app.add_middleware(DomainErrorMiddleware, logger=log)
    app.add_middleware(RequestContextMiddleware)
    return app


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


class TestRequestContext:
    async def test_incoming_request_id_is_bound_and_echoed(self, client: httpx.AsyncClient) -> None:
        """X-Request-ID from the client is the context's request_id and is echoed."""
        response = await client.get("/whoami", headers={"X-Request-ID": "req-123"})
        assert response.json() == {"request_id": "req-123", "in_task": "req-123"}
        assert response.headers["x-request-id"] == "req-123"

    async def test_missing_request_id_is_generated(self, client: httpx.AsyncClient) -> None:
        """Without the header a fresh id is made, bound and echoed."""
        first = await client.get("/whoami")
        second = await client.get("/whoami")
        assert first.json()["request_id"] == first.headers["x-request-id"]
        assert len(first.headers["x-request-id"]) == 32
        assert first.headers["x-request-id"] != second.headers["x-request-id"]

    @pytest.mark.parametrize("offered", ["", "a" * 129, "bad id", "x\ty", "<script>"])
    async def test_unsafe_request_id_is_replaced(
        self, client: httpx.AsyncClient, offered: str
    ) -> None:
        """An id that is too long or not a plain token is replaced, never echoed."""
        response = await client.get("/whoami", headers={"X-Request-ID": offered})
        assert response.headers["x-request-id"] != offered
        assert response.json()["request_id"] == response.headers["x-request-id"]

    async def test_app_cannot_spoof_the_header(self, client: httpx.AsyncClient) -> None:
        """The response carries exactly one X-Request-ID: the request's."""
        response = await client.get("/plain", headers={"X-Request-ID": "req-9"})
        assert response.headers.get_list("x-request-id") == ["req-9"]

    async def test_context_does_not_leak_after_the_request(self, client: httpx.AsyncClient) -> None:
        """After a request the caller's context is unchanged."""
        await client.get("/whoami", headers={"X-Request-ID": "req-1"})
        assert current_context() == {}


class TestDomainErrors:
    async def test_domain_error_maps_to_status_and_body(self, client: httpx.AsyncClient) -> None:
        """A Conflict becomes a 409 with the ErrorResponse JSON body."""
        response = await client.get("/conflict", headers={"X-Request-ID": "req-c"})
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "status_code": 409,
            "error_code": "CONFLICT",
            "message": "order o-1 already exists",
        }
        assert response.headers["x-request-id"] == "req-c"

    async def test_problem_json_when_asked(self, client: httpx.AsyncClient) -> None:
        """Accept: application/problem+json gets an RFC 9457 body and content type."""
        response = await client.get("/missing", headers={"Accept": "application/problem+json"})
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": "order o-9 not found",
            "code": "NOT_FOUND",
            "instance": "/missing",
        }

    async def test_5xx_domain_error_hides_its_message(self, client: httpx.AsyncClient) -> None:
        """A 503 says "service unavailable" with Retry-After, not the host or password."""
        response = await client.get("/down")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["message"] == "service unavailable"
        assert "hunter2" not in response.text
        assert "10.0.0.5" not in response.text

    async def test_unexpected_exception_is_generic_500_and_logged(
        self, client: httpx.AsyncClient, log: RecordingLogger
    ) -> None:
        """Any other exception is a generic 500; its stack is logged, its text is not sent."""
        response = await client.get("/crash", headers={"X-Request-ID": "req-x"})
        assert response.status_code == 500
        assert response.json() == {
            "status_code": 500,
            "error_code": "INTERNAL_SERVER_ERROR",
            "message": "internal server error",
        }
        assert "hunter2" not in response.text
        record = log.assert_logged("request failed", level="error", status=500, path="/crash")
        assert record.context["request_id"] == "req-x"
        assert record.error is not None
        assert record.error["type"] == "RuntimeError"

    async def test_4xx_is_logged_at_info_without_stack(
        self, client: httpx.AsyncClient, log: RecordingLogger
    ) -> None:
        """Client errors are logged at info with their code, not as errors."""
        await client.get("/missing")
        log.assert_logged("request failed", level="info", status=404, error_code="NOT_FOUND")
        assert not log.messages(level="error")

    async def test_error_after_response_started_is_reraised(
        self, app: Starlette, log: RecordingLogger
    ) -> None:
        """Once headers are sent, the error is logged and re-raised for the server to
        break the connection: no second response is attempted."""
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            with pytest.raises(RuntimeError, match="broke after the headers"):
                await http.get("/stream")
        log.assert_logged("request failed", level="error", path="/stream")


class TestPureAsgi:
    async def test_works_without_a_framework(self) -> None:
        """The middleware wraps a bare ASGI callable through httpx's ASGITransport."""

        async def bare(scope, receive, send):  # type: ignore[no-untyped-def]
            raise NotFound("nothing here")

        app = RequestContextMiddleware(DomainErrorMiddleware(bare))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/x", headers={"X-Request-ID": "r-1"})
        assert response.status_code == 404
        assert json.loads(response.text)["error_code"] == "NOT_FOUND"
        assert response.headers["x-request-id"] == "r-1"

    async def test_lifespan_passes_through(self) -> None:
        """Non-HTTP scopes reach the app untouched."""
        seen: list[str] = []

        async def app(scope, receive, send):  # type: ignore[no-untyped-def]
            seen.append(scope["type"])

        wrapped = RequestContextMiddleware(DomainErrorMiddleware(app))

        async def receive():  # type: ignore[no-untyped-def]
            return {"type": "lifespan.startup"}

        async def send(message):  # type: ignore[no-untyped-def]
            return None

        await wrapped({"type": "lifespan"}, receive, send)
        assert seen == ["lifespan"]


# -- the HTTP server span (ADR 0031) -----------------------------------------------------


@pytest.fixture
def sdk_spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An SDK TracerProvider as the global one for this test only (OpenTelemetry sets
    the global once per process: the API's module global is swapped and restored)."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.get(path)


class TestServerSpan:
    async def test_trace_requests_wraps_a_pure_asgi_app_when_telemetry_is_on(
        self, sdk_spans: Any
    ) -> None:
        """Pure ASGI, OTEL_ENABLED=true: a SERVER span with method, path and status."""
        from opentelemetry.trace import SpanKind

        app = trace_requests(
            RequestContextMiddleware(_bare), InMemoryConfig({"OTEL_ENABLED": "true"})
        )
        assert (await _get(app, "/things/1")).status_code == 202
        (span,) = sdk_spans.get_finished_spans()
        assert span.kind is SpanKind.SERVER
        assert span.name == "GET"
        assert dict(span.attributes) == {
            "http.request.method": "GET",
            "url.path": "/things/1",
            "url.scheme": "http",
            "http.response.status_code": 202,
        }

    async def test_trace_requests_is_off_with_otel_disabled(self, sdk_spans: Any) -> None:
        """OTEL_ENABLED=false: requests pass through, no span (even with an SDK)."""
        app = trace_requests(_bare, InMemoryConfig({"OTEL_ENABLED": "false"}))
        assert (await _get(app, "/")).status_code == 202
        assert list(sdk_spans.get_finished_spans()) == []

    async def test_trace_requests_decides_at_the_first_request(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_ENABLED unset: an SDK configured after wrapping (before serving) counts."""
        pytest.importorskip("opentelemetry.sdk")
        app = trace_requests(_bare, InMemoryConfig({}))  # no SDK yet: would be off
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
        assert (await _get(app, "/")).status_code == 202
        assert [s.name for s in exporter.get_finished_spans()] == ["GET"]

    async def test_install_error_handling_traces_outside_the_whole_stack(
        self, sdk_spans: Any
    ) -> None:
        """Starlette: the span wraps every middleware, once app.state.infra has telemetry."""
        from opentelemetry import trace

        seen: list[bool] = []

        class Probe:
            def __init__(self, app: Any) -> None:
                self.app = app

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] == "http":
                    seen.append(trace.get_current_span().get_span_context().is_valid)
                await self.app(scope, receive, send)

        app = Starlette(routes=[Route("/orders/{id}", plain)])
        install_error_handling(app)
        app.add_middleware(Probe)  # outermost of the user middleware
        assert (await _get(app, "/orders/1")).status_code == 200
        assert list(sdk_spans.get_finished_spans()) == []
        from adapters.telemetry import Telemetry

        app.state.infra = SimpleNamespace(telemetry=Telemetry())  # as build_infrastructure
        assert (await _get(app, "/orders/2")).status_code == 200
        (span,) = sdk_spans.get_finished_spans()
        assert span.name == "GET /orders/{id}"
        assert seen == [False, True]

    async def test_the_lifespans_telemetry_records_the_server_span_with_the_ports(self) -> None:
        """``infrastructure_lifespan(config, telemetry=...)``: the server span and the
        ports' spans go to that Telemetry's provider (no global provider is set), in
        one trace."""
        pytest.importorskip("opentelemetry.sdk")
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        from adapters.asgi import get_infrastructure, infrastructure_lifespan
        from adapters.telemetry import Telemetry, expose_current_context, join_logs_to_traces

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))

        async def count(request: Request) -> PlainTextResponse:
            infra = get_infrastructure(request)
            return PlainTextResponse(str(await infra.database.fetch_value("SELECT 1")))

        app = Starlette(
            routes=[Route("/count", count)],
            lifespan=infrastructure_lifespan(
                InMemoryConfig({"INFRA_ADAPTERS": "memory", "EVENTS_OUTBOX": "false"}),
                logger=RecordingLogger(),
                telemetry=Telemetry(tracer_provider=provider),
            ),
        )
        install_error_handling(app)
        try:
            async with app.router.lifespan_context(app):
                assert (await _get(app, "/count")).text == "1"
        finally:
            join_logs_to_traces(False)
            expose_current_context(False)
            provider.shutdown()
        server, query = sorted(exporter.get_finished_spans(), key=lambda s: s.name != "GET /count")
        assert (server.name, query.name) == ("GET /count", "SELECT")
        assert query.parent is not None
        assert query.parent.span_id == server.context.span_id

    async def test_trace_requests_with_a_telemetry_uses_its_provider(self) -> None:
        """Pure ASGI: ``trace_requests(app, config, telemetry=...)`` records the server
        span with that Telemetry even when OTEL_ENABLED is unset and no SDK is global."""
        pytest.importorskip("opentelemetry.sdk")
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        from adapters.telemetry import Telemetry

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        app = trace_requests(
            _bare, InMemoryConfig({}), telemetry=Telemetry(tracer_provider=provider)
        )
        assert (await _get(app, "/x")).status_code == 202
        provider.shutdown()
        assert [s.name for s in exporter.get_finished_spans()] == ["GET"]

    async def test_no_edge_when_starlettes_own_opentelemetry_middleware_is_in_the_stack(
        self, sdk_spans: Any
    ) -> None:
        """Starlette's own OpenTelemetry middleware in the stack: ours adds no second span."""
        otel_middleware = pytest.importorskip("starlette.middleware.opentelemetry")
        app = Starlette(routes=[Route("/plain", plain)])
        install_error_handling(app)
        app.add_middleware(otel_middleware.OpenTelemetryMiddleware)
        from adapters.telemetry import Telemetry

        app.state.infra = SimpleNamespace(telemetry=Telemetry())
        assert (await _get(app, "/plain")).status_code == 200
        (span,) = sdk_spans.get_finished_spans()
        assert span.instrumentation_scope.name != "hexinfra"
