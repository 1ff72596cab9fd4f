"""The HTTP edge: request context and one error format, for any ASGI app.

Pure ASGI (no framework at run time). Pick the recipe that fits the app:

- A pure ASGI app (no framework): wrap it, the context outside the errors so that
  error responses carry the request id too, and :func:`trace_requests` outermost (an
  HTTP server span per request when telemetry is on, see below)::

      app = RequestContextMiddleware(DomainErrorMiddleware(app, logger=logger), logger=logger)
      app = trace_requests(app, config)

- Starlette or FastAPI: the framework answers its own errors (and every exception
  that reaches its ``ServerErrorMiddleware``) before an outer wrapper sees them, so
  register the mapping inside the app instead, then add the context middleware::

      install_error_handling(app, logger=logger)
      app.add_middleware(RequestContextMiddleware, logger=logger)

  with ``lifespan=infrastructure_lifespan(config)`` given to ``Starlette(...)`` or
  ``FastAPI(...)`` to connect the adapters at startup (``app.state.infra``), and
  ``Depends(get_infrastructure)`` in FastAPI handlers. ``install_error_handling``
  also puts an HTTP server span outside the whole stack, opened per request when the
  config of the infrastructure in ``app.state.infra`` turns telemetry on.

Telemetry (ADR 0031): the server span is opened when ``OTEL_ENABLED`` says so, as
:func:`adapters.bootstrap.build_infrastructure` decides (unset: when an
OpenTelemetry SDK is configured); never without ``opentelemetry-api``, and never a
second one when an OpenTelemetry ASGI instrumentation (or FastAPI's own) already
opened a server span.

Starlette and FastAPI are imported only when those functions run: ``import
adapters.asgi`` needs neither.
"""

from __future__ import annotations

import contextlib
import http
import inspect
import json
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from domain_errors import (
    GENERIC_MESSAGE,
    PROBLEM_JSON,
    DomainError,
    ErrorCode,
    UnprocessableEntity,
    to_http_response,
    to_problem_details,
)
from ports.config import ConfigSource
from ports.context import bind_context
from ports.logger import Logger

from ._log_fields import ACCESS_LOGGED
from .redaction import is_secret_name, redact_headers, redact_value

if TYPE_CHECKING:
    from .bootstrap import Infrastructure
    from .telemetry import Telemetry

__all__ = [
    "RequestContextMiddleware",
    "DomainErrorMiddleware",
    "install_error_handling",
    "infrastructure_lifespan",
    "get_infrastructure",
    "trace_requests",
    "REQUEST_ID_HEADER",
    "ASGIApp",
    "redact_headers",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER: Final = "x-request-id"
# A client-supplied id is echoed into logs and headers: accept only short, plain tokens.
_VALID_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _new_request_id() -> str:
    return uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class RequestContextMiddleware:
    """Binds a request id to :mod:`ports.context` for each HTTP request.

    Takes the id from the ``X-Request-ID`` header when it is a plain token of at
    most 128 characters (letters, digits, ``._:-``); otherwise makes a new one. The
    id is in :func:`ports.context.request_id` for everything the request runs,
    including tasks it starts, and is echoed in the response's ``X-Request-ID``.
    With a ``logger``, each HTTP request is logged once it is answered
    (``request completed``: method, path, status, duration_ms). Non-HTTP scopes
    (lifespan) pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = REQUEST_ID_HEADER,
        make_id: Callable[[], str] = _new_request_id,
        logger: Logger | None = None,
    ) -> None:
        self.app = app
        self._header = header.lower().encode("latin-1")
        self._make_id = make_id
        self._logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        offered = _header(scope, self._header)
        rid = offered if offered and _VALID_REQUEST_ID.match(offered) else self._make_id()
        encoded = rid.encode("latin-1")
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != self._header
                ]
                headers.append((self._header, encoded))
                message["headers"] = headers
            await send(message)

        began = time.perf_counter()
        # Our access line is on: the stdlib bridge drops uvicorn's for this request.
        flag = ACCESS_LOGGED.set(True) if self._logger is not None else None
        with bind_context(request_id=rid):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self._logger is not None and scope["type"] == "http":
                    with contextlib.suppress(Exception):  # a logger must not mask the outcome
                        self._logger.info(
                            "request completed",
                            method=scope.get("method", ""),
                            path=scope.get("path", ""),
                            status=status or 500,
                            duration_ms=round((time.perf_counter() - began) * 1000, 3),
                        )
                if flag is not None:
                    ACCESS_LOGGED.reset(flag)


def _wants_problem_json(scope: Scope) -> bool:
    accept = _header(scope, b"accept") or ""
    return PROBLEM_JSON in accept.lower()


_GENERIC_BODY: Final = json.dumps(
    {
        "status_code": 500,
        "error_code": ErrorCode.INTERNAL_SERVER_ERROR,
        "message": GENERIC_MESSAGE,
    },
    separators=(",", ":"),
).encode()


def _error_body(scope: Scope, exc: Exception) -> tuple[int, str, bytes]:
    """Status, content type and JSON body for ``exc``, redacted (adapters.redaction)."""
    body: dict[str, Any]
    if _wants_problem_json(scope):
        body = to_problem_details(exc, instance=scope.get("path") or None)
        status = int(body["status"])
        content_type = PROBLEM_JSON
        if body.get("title") == "Error":  # a status domain_errors has no title for (405...)
            body["title"] = _phrase(status)
    else:
        response = to_http_response(exc)
        body = response.to_dict()
        status = response.status_code
        content_type = "application/json"
        if isinstance(exc, _ValidationFailed):
            body["details"] = dict(exc.details)  # the failing fields, never their values
    payload = json.dumps(redact_value(body), separators=(",", ":"), default=str)
    return status, content_type, payload.encode("utf-8", "backslashreplace")


class DomainErrorMiddleware:
    """Turns exceptions into JSON error responses a client may see.

    - A :class:`domain_errors.DomainError` -> its status and the ``ErrorResponse``
      body ``{"status_code", "error_code", "message"}``; a 5xx shows a generic
      message, never its own.
    - With ``Accept: application/problem+json`` -> an RFC 9457 body with that
      content type instead.
    - Any other exception -> 500 with the generic body; it is logged at ``error``
      with its stack (when a logger is given) and its message never reaches the body.
    - 4xx errors are logged at ``info``; 5xx at ``error`` with the stack and the
      request headers (``authorization``, ``cookie``, ``x-api-key``... redacted).
    - If the response has already started, nothing can be sent: the error is logged
      and re-raised for the server to close the connection.
    - A response is always sent: a logger that raises, or an exception whose ``str()``
      or details cannot be rendered, still gives the generic 500 body.
    - Bodies go through :mod:`adapters.redaction` (a 4xx message a handler wrote with
      a URL or token in it is redacted); database details (SQLSTATE, constraint,
      table) are logged for operators, never sent (``DomainError.public_details``).
    """

    def __init__(self, app: ASGIApp, *, logger: Logger | None = None) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            with contextlib.suppress(Exception):  # a logger must not cost the response
                self._log(scope, exc)
            if started:
                raise
            await self._respond(scope, send, exc)

    def _log(self, scope: Scope, exc: Exception) -> None:
        _log_failure(self.logger, scope, exc)

    async def _respond(self, scope: Scope, send: Send, exc: Exception) -> None:
        status, headers, payload = _error_response(scope, exc)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _log_failure(logger: Logger | None, scope: Scope, exc: Exception) -> None:
    """4xx at ``info``; 5xx and unexpected exceptions at ``error`` with the stack and
    the request headers (secret-looking values hidden)."""
    if logger is None:
        return
    where: dict[str, Any] = {"method": scope.get("method", ""), "path": scope.get("path", "")}
    if isinstance(exc, DomainError) and exc.details:
        where["details"] = dict(exc.details)  # SQLSTATE, constraint...: for operators
    if isinstance(exc, DomainError) and exc.status < 500:
        logger.info("request failed", status=exc.status, error_code=exc.code, **where)
        return
    status = exc.status if isinstance(exc, DomainError) else 500
    headers = [
        (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
        for k, v in scope.get("headers", ())
    ]
    where["headers"] = redact_headers(headers)  # secret-looking values hidden
    logger.error("request failed", exc=exc, status=status, **where)


def _error_response(
    scope: Scope, exc: Exception, extra_headers: Mapping[str, str] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw headers and body of the error response for ``exc``; never raises."""
    try:
        status, content_type, payload = _error_body(scope, exc)
    except Exception:  # an error that cannot be rendered still gets an answer
        status, content_type, payload = 500, "application/json", _GENERIC_BODY
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    for name, value in (extra_headers or {}).items():
        lowered = name.lower()
        if lowered not in ("content-type", "content-length"):
            headers.append((lowered.encode("latin-1"), str(value).encode("latin-1")))
    return status, headers, payload


# -- Starlette and FastAPI ---------------------------------------------------------------

_STATUS_CODES: Final[dict[int, str]] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    422: ErrorCode.UNPROCESSABLE_ENTITY,
    429: ErrorCode.TOO_MANY_REQUESTS,
    500: ErrorCode.INTERNAL_SERVER_ERROR,
    503: ErrorCode.SERVICE_UNAVAILABLE,
}
_HTTP_ERRORS: dict[int, type[DomainError]] = {}


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _http_error_class(status: int) -> type[DomainError]:
    """A DomainError class for an HTTP status (one per status, made once)."""
    cls = _HTTP_ERRORS.get(status)
    if cls is None:
        phrase = _phrase(status)
        code = _STATUS_CODES.get(status) or (
            re.sub(r"[^A-Z0-9]+", "_", phrase.upper()).strip("_")
            if phrase != "Error"
            else f"HTTP_{status}"
        )
        cls = type(
            f"HTTPError{status}",
            (DomainError,),
            {"status": status, "default_code": code, "__module__": __name__},
        )
        _HTTP_ERRORS[status] = cls
    return cls


class _ValidationFailed(UnprocessableEntity):
    """FastAPI's RequestValidationError as a DomainError: the fields, never the values."""

    default_code = ErrorCode.VALIDATION_FAILED


def _from_http_exception(exc: Any) -> DomainError:
    """A framework's ``HTTPException`` (Starlette's, FastAPI's) as a DomainError."""
    status = int(getattr(exc, "status_code", 500) or 500)
    if not 400 <= status <= 599:
        status = 500
    detail = getattr(exc, "detail", None)
    cls = _http_error_class(status)
    phrase = _phrase(status)
    if isinstance(detail, str) and detail and detail != phrase:
        return cls(detail)
    if detail is None or isinstance(detail, str):  # the framework's default: the phrase
        return cls(phrase.lower())
    return cls(phrase.lower(), details={"detail": detail})


def _validation_fields(errors: Any) -> list[dict[str, Any]]:
    """Each failing field: where it is, the error type and message; never its input."""
    fields: list[dict[str, Any]] = []
    for error in list(errors)[:100]:
        if not isinstance(error, Mapping):
            continue
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        secret = any(isinstance(part, str) and is_secret_name(part) for part in loc)
        fields.append(
            {
                "field": ".".join(str(part) for part in loc),
                "loc": loc,
                "type": str(error.get("type", "")),
                # A custom validator's message may quote the value: not for secrets.
                "message": "invalid value" if secret else str(error.get("msg", "")),
            }
        )
    return fields


def _from_validation_error(exc: Any) -> DomainError:
    try:
        fields = _validation_fields(exc.errors())
    except Exception:
        fields = []
    return _ValidationFailed("request validation failed", details={"fields": fields})


def _as_domain_error(exc: Exception) -> Exception:
    """What a handler answers with: DomainErrors as they are, framework errors mapped."""
    if isinstance(exc, DomainError):
        return exc
    starlette_exceptions = sys.modules.get("starlette.exceptions")
    if starlette_exceptions is not None and isinstance(exc, starlette_exceptions.HTTPException):
        return _from_http_exception(exc)
    fastapi_exceptions = sys.modules.get("fastapi.exceptions")
    if fastapi_exceptions is not None and isinstance(
        exc, fastapi_exceptions.RequestValidationError
    ):
        return _from_validation_error(exc)
    return exc


def install_error_handling(app: Any, *, logger: Logger | None = None) -> None:
    """Answer every error of a Starlette or FastAPI ``app`` in one format.

    Registers exception handlers (the framework's own mechanism) so that a
    :class:`~domain_errors.DomainError`, an ``HTTPException`` (Starlette's or
    FastAPI's: unknown routes 404, 405 with its ``Allow`` header, ``raise
    HTTPException(...)`` in a handler) and FastAPI's ``RequestValidationError``
    (422, code ``VALIDATION_FAILED``, the failing fields in ``details`` / RFC 9457
    ``errors``: location, type and message, never the submitted value) all answer
    as :class:`DomainErrorMiddleware` does: the ``ErrorResponse`` JSON body, or RFC
    9457 ``application/problem+json`` when the client's ``Accept`` asks for it.

    Any other exception is a generic 500, logged with its stack: a
    :class:`DomainErrorMiddleware` is added as the innermost middleware (so the
    answer passes through ``RequestContextMiddleware`` and carries the request id),
    and a handler for ``Exception`` renders what a middleware of yours raises.

    With telemetry on for the infrastructure in ``app.state.infra`` (its
    ``telemetry``, as :func:`adapters.bootstrap.build_infrastructure` decided from
    ``OTEL_ENABLED``; the lifespan of :func:`infrastructure_lifespan` puts it there),
    each HTTP request gets an OpenTelemetry server span recorded with the providers
    the ports use, opened outside the whole middleware stack (see
    :func:`trace_requests`); nothing when an OpenTelemetry ASGI instrumentation, or
    FastAPI's own telemetry, already opened one.

    Call it before the app starts (as ``add_middleware``); calling it again does
    nothing. Starlette and FastAPI are imported only here.
    """
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware

    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError("install_error_handling must be called before the app starts")
    state = app.state
    if getattr(state, "hexinfra_error_handling", False):
        return
    state.hexinfra_error_handling = True

    async def handle(connection: Any, exc: Exception) -> Any:
        return await _framework_response(connection, exc, logger)

    app.add_exception_handler(DomainError, handle)
    app.add_exception_handler(HTTPException, handle)
    if "fastapi" in sys.modules:  # a FastAPI app: its module is loaded
        from fastapi.exceptions import RequestValidationError

        app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(Exception, handle)
    # Innermost user middleware: unexpected exceptions answered inside the context.
    app.user_middleware.append(Middleware(DomainErrorMiddleware, logger=logger))
    _trace_outside_the_stack(app)


def _trace_outside_the_stack(app: Any) -> None:
    """Wrap the stack the framework builds at its first call in a server-span edge.

    Outside ``ServerErrorMiddleware`` and every user middleware (``add_middleware``
    after this call would otherwise go outside it), so the span covers the whole
    request and the access line of ``RequestContextMiddleware`` carries its ids. The
    decision is taken per request from ``app.state.infra`` (set at startup by
    :func:`infrastructure_lifespan`): middleware cannot be added once the app runs.
    """
    build = app.build_middleware_stack
    state = app.state

    def infra() -> Infrastructure | None:
        return getattr(state, "infra", None)

    def build_with_server_span() -> ASGIApp:
        stack: ASGIApp = build()
        if _instrumented(stack):  # an OpenTelemetry ASGI instrumentation is in charge
            return stack
        return _ServerSpanEdge(stack, infra, _traced_as_infra)

    app.build_middleware_stack = build_with_server_span


def _traced_as_infra(app: ASGIApp, infra: Any) -> ASGIApp | None:
    """``app`` in a server span with the infrastructure's telemetry (the one its ports
    record to); ``None`` when its telemetry is off."""
    telemetry = getattr(infra, "telemetry", None)
    if telemetry is None:
        return None
    from .telemetry import TracedASGIMiddleware

    return TracedASGIMiddleware(app, telemetry=telemetry)


async def _framework_response(connection: Any, exc: Exception, logger: Logger | None) -> Any:
    from starlette.responses import Response

    scope = connection.scope
    error = _as_domain_error(exc)
    with contextlib.suppress(Exception):  # a logger must not cost the response
        _log_failure(logger, scope, error)
    if scope.get("type") == "websocket":
        status = error.status if isinstance(error, DomainError) else 500
        await connection.close(code=1011 if status >= 500 else 1008)
        return None
    extra = getattr(exc, "headers", None) if error is not exc else None
    status, headers, payload = _error_response(scope, error, extra)
    response = Response(content=payload, status_code=status)
    response.raw_headers = headers
    return response


def infrastructure_lifespan(
    config: ConfigSource,
    *,
    logger: Logger | None = None,
    memory: bool | None = None,
    setup: Callable[[Infrastructure], Awaitable[None]] | None = None,
    telemetry: Telemetry | None = None,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette/FastAPI ``lifespan`` that connects the adapters at startup.

    ``Starlette(lifespan=infrastructure_lifespan(config))`` (or ``FastAPI(...)``):
    at startup :func:`adapters.bootstrap.build_infrastructure` (``config``,
    ``logger``, ``memory``, ``telemetry`` as there) is entered and put in ``app.state.infra``,
    then ``setup(infra)`` runs (migrations, subscriptions); at shutdown, after the
    server has finished its requests, it is closed. A failed connect (or ``setup``)
    closes whatever was opened and fails the startup: the server stops with the
    error and never serves.
    """
    from .bootstrap import build_infrastructure

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        infra = build_infrastructure(config, memory=memory, logger=logger, telemetry=telemetry)
        async with infra:
            if setup is not None:
                await setup(infra)
            app.state.infra = infra
            try:
                yield
            finally:
                with contextlib.suppress(AttributeError):
                    del app.state.infra

    return lifespan


# -- the HTTP server span (ADR 0031) ------------------------------------------------------


def trace_requests(
    app: ASGIApp, config: ConfigSource, *, telemetry: Telemetry | None = None
) -> ASGIApp:
    """``app`` with an OpenTelemetry HTTP server span per request when telemetry is on.

    For a pure ASGI app (Starlette and FastAPI get it from
    :func:`install_error_handling`); put it outermost. On ``config``'s
    ``OTEL_ENABLED`` as :func:`adapters.bootstrap.build_infrastructure` reads it
    (unset: when an OpenTelemetry SDK is configured), decided at the first request,
    so an SDK configured after this call still counts. Off, or without
    ``opentelemetry-api``, the request passes through untouched. The span itself is
    :class:`adapters.telemetry.TracedASGIMiddleware`'s (none when a server span is
    already open), recorded with ``telemetry`` (pass ``infra.telemetry`` to record
    with the providers the ports use; ``None``: the global ones).
    """

    def traced(app: ASGIApp, config: ConfigSource) -> ASGIApp | None:
        from ._telemetry_switch import telemetry_wanted

        if not telemetry_wanted(config.get("OTEL_ENABLED"), given=telemetry is not None):
            return None
        from .telemetry import TracedASGIMiddleware

        return TracedASGIMiddleware(app, telemetry=telemetry)

    return _ServerSpanEdge(app, lambda: config, traced)


class _ServerSpanEdge:
    """Hands HTTP requests to the traced ``app`` that ``trace(app, source)`` builds for
    the source ``source_of`` gives (the infrastructure, or a config), decided once per
    source object; passes them through when there is no source yet or ``trace`` said
    ``None`` (telemetry off)."""

    def __init__(
        self,
        app: ASGIApp,
        source_of: Callable[[], Any],
        trace: Callable[[ASGIApp, Any], ASGIApp | None],
    ) -> None:
        self.app = app
        self._source_of = source_of
        self._trace = trace
        self._decided_for: Any = None
        self._traced: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            source = self._source_of()
            if source is not None:
                if source is not self._decided_for:
                    self._traced = self._trace(self.app, source)
                    self._decided_for = source
                if self._traced is not None:
                    await self._traced(scope, receive, send)
                    return
        await self.app(scope, receive, send)


_INSTRUMENTATIONS: Final = ("opentelemetry.instrumentation.", "starlette.middleware.opentelemetry")


def _instrumented(stack: Any) -> bool:
    """Whether an OpenTelemetry ASGI middleware (the contrib instrumentation's,
    Starlette's own) is in the chain of ``.app`` below: it opens the server span."""
    seen: set[int] = set()
    while stack is not None and id(stack) not in seen:
        seen.add(id(stack))
        if type(stack).__module__.startswith(_INSTRUMENTATIONS):
            return True
        stack = getattr(stack, "app", None)
    return False


class _InfrastructureDependency:
    """``get_infrastructure(request)``: the ``Infrastructure`` in ``app.state.infra``.

    A FastAPI dependency (``Depends(get_infrastructure)``), also callable from a
    Starlette endpoint. Its signature names Starlette's ``Request`` only when asked
    for (FastAPI reads it), so importing this module imports no framework.
    """

    __name__ = "get_infrastructure"

    @property
    def __signature__(self) -> inspect.Signature:
        from starlette.requests import Request

        from .bootstrap import Infrastructure

        parameter = inspect.Parameter(
            "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
        )
        return inspect.Signature([parameter], return_annotation=Infrastructure)

    def __call__(self, request: Any) -> Infrastructure:
        infra: Infrastructure | None = getattr(request.app.state, "infra", None)
        if infra is None:
            raise RuntimeError(
                "no infrastructure in app.state.infra: give the app "
                "lifespan=infrastructure_lifespan(config)"
            )
        return infra

    def __repr__(self) -> str:
        return "get_infrastructure"


get_infrastructure: Final = _InfrastructureDependency()
