"""FastAPI and Starlette apps under a real uvicorn, driven over a loopback socket.

One server per framework for the module (in a thread, its own event loop), with the
adapters from ``infrastructure_lifespan`` (memory mode), ``install_error_handling``
and ``RequestContextMiddleware``; every log line (ours, uvicorn's, a library's through
stdlib ``logging``, the event handler's) is read back from the one JSON stream.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from fastapi import HTTPException as FastAPIHTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.asgi import (
    RequestContextMiddleware,
    get_infrastructure,
    infrastructure_lifespan,
    install_error_handling,
)
from adapters.bootstrap import Infrastructure
from adapters.memory import InMemoryConfig
from adapters.structlog_logger import StructlogLogger, capture_stdlib_logging
from domain_errors import PROBLEM_JSON, Conflict
from ports.events import Event, Reject
from ports.logger import Logger

FRAMEWORKS = ("fastapi", "starlette")
Infra = Annotated[Infrastructure, Depends(get_infrastructure)]
library_log = logging.getLogger("thirdparty.client")


class LogStream(io.StringIO):
    """The JSON lines written so far, parsed."""

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines() if line.strip()]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if predicate(line)]
            if found:
                return found
            time.sleep(0.01)
        raise AssertionError("no such log line")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A uvicorn.Server on a free loopback port, in a thread with its own loop."""

    def __init__(self, app: Any, infra_box: dict[str, Infrastructure]) -> None:
        self.port = _free_port()
        self.app = app
        self.infra_box = infra_box
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,  # configure_logging took the uvicorn loggers over
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.exit_code: int | str | None = None

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit as exc:  # uvicorn exits 3 when the startup failed
            self.exit_code = exc.code

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive()

    @property
    def infra(self) -> Infrastructure:
        return self.infra_box["infra"]


def _config() -> InMemoryConfig:
    return InMemoryConfig({"INFRA_ADAPTERS": "memory", "SERVICE_NAME": "web"})


def _setup(
    logger: Logger, box: dict[str, Infrastructure], fail: bool = False
) -> Callable[[Infrastructure], Awaitable[None]]:
    async def setup(infra: Infrastructure) -> None:
        box["infra"] = infra

        async def on_note(event: Event) -> None:
            if event.data.get("count", 0) < 0:
                raise Reject("a negative count can never be handled")
            logger.info("note handled", note_id=event.data["id"])

        await infra.subscriber.subscribe("note.added", on_note, durable="notes", max_deliver=2)
        if fail:
            raise RuntimeError("migration failed: password=hunter2")

    return setup


async def _add_note(infra: Infrastructure, note: dict[str, Any]) -> dict[str, Any]:
    library_log.warning("library call for note %s", note["id"])
    await infra.publisher.publish(
        Event(type="note.added", source="web", organization_id="org-1", data=note)
    )
    return {"id": note["id"]}


class Note(BaseModel):
    id: str
    count: int
    api_token: str


def fastapi_app(
    logger: Logger, box: dict[str, Infrastructure], *, fail: bool = False, gate: Any = None
) -> FastAPI:
    app = FastAPI(
        lifespan=infrastructure_lifespan(_config(), logger=logger, setup=_setup(logger, box, fail))
    )

    @app.post("/notes", status_code=201)
    async def add(note: Note, infra: Infra) -> Any:
        return await _add_note(infra, {"id": note.id, "count": note.count})

    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("note n-1 already exists", details={"note_id": "n-1"})

    @app.get("/forbidden")
    async def forbidden() -> None:
        raise FastAPIHTTPException(403, "not your note")

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("SELECT * FROM notes WHERE password = 'hunter2'")

    @app.get("/health")
    async def health(infra: Infra) -> Any:
        return (await infra.health()).to_dict()

    @app.get("/slow")
    async def slow() -> Any:
        gate.set()
        await asyncio.sleep(0.5)
        return {"slow": "done"}

    install_error_handling(app, logger=logger)
    app.add_middleware(RequestContextMiddleware, logger=logger)  # ours is the access line
    return app


def starlette_app(logger: Logger, box: dict[str, Infrastructure]) -> Starlette:
    async def add(request: Request) -> JSONResponse:
        body = await request.json()
        infra = get_infrastructure(request)
        return JSONResponse(await _add_note(infra, body), status_code=201)

    async def conflict(request: Request) -> JSONResponse:
        raise Conflict("note n-1 already exists", details={"note_id": "n-1"})

    async def forbidden(request: Request) -> JSONResponse:
        raise StarletteHTTPException(403, "not your note")

    async def crash(request: Request) -> JSONResponse:
        raise RuntimeError("SELECT * FROM notes WHERE password = 'hunter2'")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse((await get_infrastructure(request).health()).to_dict())

    app = Starlette(
        routes=[
            Route("/notes", add, methods=["POST"]),
            Route("/conflict", conflict),
            Route("/forbidden", forbidden),
            Route("/crash", crash),
            Route("/health", health),
        ],
        lifespan=infrastructure_lifespan(_config(), logger=logger, setup=_setup(logger, box)),
    )
    install_error_handling(app, logger=logger)
    app.add_middleware(RequestContextMiddleware)  # no logger: uvicorn's is the access line
    return app


@pytest.fixture(scope="module")
def logs() -> Iterator[tuple[LogStream, StructlogLogger]]:
    stream = LogStream()
    logger = StructlogLogger(service="web", stream=stream)
    root = logging.getLogger()
    level = root.level
    bridge = capture_stdlib_logging(logger)
    yield stream, logger
    root.removeHandler(bridge)
    root.setLevel(level)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def served(
    request: pytest.FixtureRequest, logs: tuple[LogStream, StructlogLogger]
) -> Iterator[Served]:
    _, logger = logs
    box: dict[str, Infrastructure] = {}
    make = fastapi_app if request.param == "fastapi" else starlette_app
    server = Served(make(logger, box), box).start()
    yield server
    server.stop()


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=10) as http:
        yield http


def _framework(served: Served) -> str:
    return "fastapi" if isinstance(served.app, FastAPI) else "starlette"


# -- errors: one format, or RFC 9457 when asked -----------------------------------------

ERROR_CASES = [
    # (name, method, path, json body, status, code)
    ("domain", "GET", "/conflict", None, 409, "CONFLICT"),
    ("unknown route", "GET", "/no/such/route", None, 404, "NOT_FOUND"),
    ("method", "DELETE", "/notes", None, 405, "METHOD_NOT_ALLOWED"),
    ("http exception", "GET", "/forbidden", None, 403, "FORBIDDEN"),
    ("unexpected", "GET", "/crash", None, 500, "INTERNAL_SERVER_ERROR"),
    (
        "validation",
        "POST",
        "/notes",
        {"id": "n-1", "count": "many", "api_token": ["s3cr3t-value"]},
        422,
        "VALIDATION_FAILED",
    ),
]


@pytest.mark.parametrize("problem", [False, True], ids=["json", "problem+json"])
@pytest.mark.parametrize(("name", "method", "path", "body", "status", "code"), ERROR_CASES)
def test_every_error_kind_answers_in_one_format(
    served: Served,
    client: httpx.Client,
    problem: bool,
    name: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
) -> None:
    if name == "validation" and _framework(served) == "starlette":
        pytest.skip("RequestValidationError is FastAPI's")
    headers = {"accept": PROBLEM_JSON} if problem else {}
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == status
    assert response.headers["x-request-id"]
    assert "hunter2" not in response.text
    assert "s3cr3t" not in response.text
    answer = response.json()
    if problem:
        assert response.headers["content-type"] == PROBLEM_JSON
        assert answer["status"] == status
        assert answer["code"] == code
        assert answer["type"] == "about:blank"
        assert answer["title"]
        assert answer["instance"] == path
        message = answer["detail"]
    else:
        assert response.headers["content-type"] == "application/json"
        assert answer["status_code"] == status
        assert answer["error_code"] == code
        message = answer["message"]
    if status == 500:
        assert message == "internal server error"
    if status == 405:
        assert response.headers["allow"] == "POST"
    if name == "http exception":
        assert message == "not your note"
    if name == "validation":
        details = answer["errors"] if problem else answer["details"]
        fields = {field["field"]: field for field in details["fields"]}
        assert set(fields) == {"body.count", "body.api_token"}
        assert fields["body.count"]["type"] == "int_parsing"
        assert fields["body.api_token"]["message"] == "invalid value"
        assert all("input" not in field for field in fields.values())


def test_unexpected_error_is_logged_with_its_stack_under_the_request_id(
    served: Served, client: httpx.Client, logs: tuple[LogStream, StructlogLogger]
) -> None:
    stream, _ = logs
    rid = f"req-crash-{_framework(served)}"
    assert client.get("/crash", headers={"X-Request-ID": rid}).status_code == 500
    (failed,) = stream.wait_for(
        lambda line: line.get("request_id") == rid and line["message"] == "request failed"
    )
    assert failed["level"] == "error"
    assert failed["error"]["type"] == "RuntimeError"
    assert "Traceback" in failed["error"]["stack"]
    assert "hunter2" not in json.dumps(failed)
    # Answered inside the app: uvicorn never saw the exception.
    lines = [line for line in stream.lines() if line.get("request_id") == rid]
    assert not any("Exception in ASGI application" in line["message"] for line in lines)


# -- one log stream ----------------------------------------------------------------------


def test_request_id_is_in_every_line_of_the_request(
    served: Served, client: httpx.Client, logs: tuple[LogStream, StructlogLogger]
) -> None:
    stream, _ = logs
    framework = _framework(served)
    rid = f"req-note-{framework}"
    note = {"id": f"n-{framework}", "count": 2, "api_token": "tok"}
    response = client.post("/notes", json=note, headers={"X-Request-ID": rid})
    assert response.status_code == 201
    assert response.headers["x-request-id"] == rid
    stream.wait_for(
        lambda line: line["message"] == "note handled" and line.get("request_id") == rid
    )
    mine = [line for line in stream.lines() if line.get("request_id") == rid]
    messages = [line["message"] for line in mine]
    # A library's stdlib record, in our JSON, with the request context and its logger.
    (library,) = [line for line in mine if line.get("logger") == "thirdparty.client"]
    assert library["message"] == f"library call for note {note['id']}"
    assert library["level"] == "warning"
    # The event handler, in another task, later.
    (handled,) = [line for line in mine if line["message"] == "note handled"]
    assert handled["event_id"]
    # Exactly one access line per request: ours (FastAPI app) or uvicorn's (Starlette app).
    access = [
        line
        for line in mine
        if line["message"] == "request completed" or line.get("logger") == "uvicorn.access"
    ]
    assert len(access) == 1, messages
    (line,) = access
    if framework == "fastapi":
        assert line["message"] == "request completed"
    else:
        assert line["logger"] == "uvicorn.access"
        assert line["method"] == "POST"
        assert line["path"] == "/notes"
        assert line["status"] == 201
    assert all(line["service"] == "web" for line in mine)


def test_dead_letter_lines_carry_the_event_id_and_the_request_id(
    served: Served, client: httpx.Client, logs: tuple[LogStream, StructlogLogger]
) -> None:
    stream, _ = logs
    rid = f"req-dead-{_framework(served)}"
    note = {"id": f"n-dead-{_framework(served)}", "count": -1, "api_token": "tok"}
    assert client.post("/notes", json=note, headers={"X-Request-ID": rid}).status_code == 201
    (dead,) = stream.wait_for(
        lambda line: "dead-lettered" in line["message"] and line.get("request_id") == rid
    )
    assert dead["event_id"]


def test_uvicorn_lines_come_out_as_our_json(logs: tuple[LogStream, StructlogLogger]) -> None:
    stream, _ = logs
    started = [line for line in stream.lines() if line.get("logger") == "uvicorn.error"]
    assert any("Uvicorn running on" in line["message"] for line in started)
    assert all(line["service"] == "web" for line in started)


# -- lifespan ----------------------------------------------------------------------------


def test_lifespan_connects_at_startup_and_closes_at_shutdown(
    logs: tuple[LogStream, StructlogLogger],
) -> None:
    _, logger = logs
    box: dict[str, Infrastructure] = {}
    gate = threading.Event()
    server = Served(fastapi_app(logger, box, gate=gate), box).start()
    health = httpx.get(f"{server.url}/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["healthy"] is True
    assert health.json()["mode"] == "memory"
    infra = server.infra
    # A request in flight when the server is told to stop completes.
    outcome: dict[str, httpx.Response] = {}
    slow = threading.Thread(
        target=lambda: outcome.update(r=httpx.get(f"{server.url}/slow", timeout=10))
    )
    slow.start()
    assert gate.wait(5)
    server.stop()
    slow.join(10)
    assert outcome["r"].status_code == 200
    assert outcome["r"].json() == {"slow": "done"}
    # Then the adapters were closed: the event bus reports itself closed.
    report = asyncio.run(infra.health())
    assert report.components["events"].ok is False
    assert not hasattr(server.app.state, "infra")


def test_a_failed_startup_stops_the_server_with_the_error_and_leaves_nothing_open(
    logs: tuple[LogStream, StructlogLogger],
) -> None:
    stream, logger = logs
    box: dict[str, Infrastructure] = {}
    server = Served(fastapi_app(logger, box, fail=True), box)
    server.thread.start()
    server.thread.join(10)
    assert not server.thread.is_alive()
    assert not server.server.started
    assert server.exit_code == 3  # uvicorn's "startup failed"
    report = asyncio.run(server.infra.health())
    assert report.components["events"].ok is False  # connected, then closed
    failed = [
        line
        for line in stream.lines()
        if line.get("logger") == "uvicorn.error" and line["level"] == "error"
    ]
    assert any("migration failed" in json.dumps(line) for line in failed)
    assert "hunter2" not in stream.getvalue()


def test_importing_adapters_asgi_loads_no_framework() -> None:
    code = (
        "import sys, adapters.asgi;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'starlette', 'fastapi', 'uvicorn', 'pydantic'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the HTTP server span (ADR 0031) -----------------------------------------------------


@pytest.fixture
def sdk_spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An SDK TracerProvider as the global one for this test only, its spans in memory.

    OpenTelemetry sets the global provider once per process: the test swaps the API's
    module global instead (restored after), so later tests see no SDK configured.
    """
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from adapters.telemetry import expose_current_context, join_logs_to_traces

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    try:
        yield exporter
    finally:
        join_logs_to_traces(False)  # build_infrastructure installed both hooks
        expose_current_context(False)
        provider.shutdown()


def _traced_app(framework: str, logger: Logger, otel_enabled: str) -> Any:
    """The README recipe (lifespan, install_error_handling, RequestContextMiddleware)
    with one route that queries the database and publishes an event; the event's
    handler queries the database too."""
    config = InMemoryConfig(
        {"INFRA_ADAPTERS": "memory", "SERVICE_NAME": "web", "OTEL_ENABLED": otel_enabled}
    )

    async def setup(infra: Infrastructure) -> None:
        async def on_note(event: Event) -> None:
            await infra.database.fetch_value("SELECT 2")

        await infra.subscriber.subscribe("note.added", on_note, durable="traced-notes")

    async def add(infra: Infrastructure, note_id: str) -> dict[str, Any]:
        await infra.database.fetch_value("SELECT 1")
        return await _add_note(infra, {"id": note_id})

    lifespan = infrastructure_lifespan(config, logger=logger, setup=setup)
    app: Any
    if framework == "starlette":

        async def endpoint(request: Request) -> JSONResponse:
            body = await add(get_infrastructure(request), request.path_params["note_id"])
            return JSONResponse(body, status_code=201)

        app = Starlette(
            routes=[Route("/notes/{note_id}", endpoint, methods=["POST"])], lifespan=lifespan
        )
    else:
        # "fastapi": FastAPI's own request telemetry off (it has some since 0.165), so
        # the span is ours; "fastapi-native": FastAPI's own span, and ours stays out.
        own: dict[str, Any] = {}
        if framework == "fastapi" and "telemetry" in inspect.signature(FastAPI).parameters:
            own["telemetry"] = {"tracing": False}
        fast: FastAPI = FastAPI(lifespan=lifespan, **own)

        @fast.post("/notes/{note_id}", status_code=201)
        async def add_route(note_id: str, infra: Infra) -> Any:
            return await add(infra, note_id)

        app = fast

    install_error_handling(app, logger=logger)
    app.add_middleware(RequestContextMiddleware, logger=logger)
    return app


def _wait_for_span(exporter: Any, name: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no span {name!r}: {[s.name for s in exporter.get_finished_spans()]}")


def _ancestors(span: Any, spans: list[Any]) -> list[int]:
    by_id = {s.context.span_id: s for s in spans}
    chain: list[int] = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span.context.span_id)
    return chain


@pytest.mark.parametrize("framework", ["starlette", "fastapi", "fastapi-native"])
def test_the_readme_recipe_gives_one_server_span_over_the_handlers_spans(
    framework: str, sdk_spans: Any
) -> None:
    """Telemetry on: one SERVER span per request, over the handler's DB and event spans."""
    from opentelemetry.trace import SpanKind

    stream = LogStream()
    logger = StructlogLogger(service="web", stream=stream)
    server = Served(_traced_app(framework, logger, "true"), {}).start()
    try:
        response = httpx.post(
            f"{server.url}/notes/n-7", headers={"X-Request-ID": "req-span"}, timeout=10
        )
        assert response.status_code == 201
        process = _wait_for_span(sdk_spans, "process note.added")
        handled = _wait_for_span(sdk_spans, "SELECT")  # both queries are named SELECT
        assert handled
    finally:
        server.stop()
    spans = list(sdk_spans.get_finished_spans())
    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert root.instrumentation_scope.name == (
        "fastapi" if framework == "fastapi-native" else "hexinfra"
    )
    assert root.name == "POST /notes/{note_id}"
    assert root.parent is None
    assert root.attributes is not None
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/notes/{note_id}"
    assert root.attributes["http.response.status_code"] == 201
    assert root.attributes["url.path"] == "/notes/n-7"
    queries = [s for s in spans if s.kind is SpanKind.CLIENT and s.name == "SELECT"]
    (send,) = [s for s in spans if s.name == "send note.added"]
    assert len(queries) == 2  # the route's and the event handler's
    for span in [*queries, send, process]:
        assert span.context.trace_id == root.context.trace_id
        assert root.context.span_id in _ancestors(span, spans), span.name
    # The edge is outside RequestContextMiddleware: the access line is in the span.
    (access,) = stream.wait_for(
        lambda line: line["message"] == "request completed" and line.get("request_id") == "req-span"
    )
    assert access["trace_id"] == f"{root.context.trace_id:032x}"


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_with_otel_disabled_the_recipe_opens_no_span(framework: str, sdk_spans: Any) -> None:
    """OTEL_ENABLED=false with an SDK configured: no span at all, no trace id logged."""
    stream = LogStream()
    logger = StructlogLogger(service="web", stream=stream)
    server = Served(_traced_app(framework, logger, "false"), {}).start()
    try:
        response = httpx.post(
            f"{server.url}/notes/n-8", headers={"X-Request-ID": "req-off"}, timeout=10
        )
        assert response.status_code == 201
        (access,) = stream.wait_for(
            lambda line: (
                line["message"] == "request completed" and line.get("request_id") == "req-off"
            )
        )
    finally:
        server.stop()
    assert list(sdk_spans.get_finished_spans()) == []
    assert "trace_id" not in access


def test_without_opentelemetry_the_recipe_serves_and_imports_no_telemetry() -> None:
    """Without opentelemetry-api the recipe serves and never imports adapters.telemetry."""
    code = """
import sys
for name in [m for m in sys.modules if m.split('.')[0] == 'opentelemetry']:
    del sys.modules[name]
sys.modules['opentelemetry'] = None
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from adapters.asgi import RequestContextMiddleware, infrastructure_lifespan, install_error_handling
from adapters.memory import InMemoryConfig

async def hello(request):
    return PlainTextResponse('hi')

config = InMemoryConfig({'INFRA_ADAPTERS': 'memory'})
app = Starlette(routes=[Route('/', hello)], lifespan=infrastructure_lifespan(config))
install_error_handling(app)
app.add_middleware(RequestContextMiddleware)
with TestClient(app) as client:
    assert client.get('/').text == 'hi'
print('telemetry imported:', 'adapters.telemetry' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "telemetry imported: False"
