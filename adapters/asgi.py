"""The HTTP edge as pure ASGI middleware: request context and error responses.

Works with any ASGI framework (Starlette, FastAPI, Litestar...) and needs none at
run time. Stack them with the context outermost, so that error responses carry the
request id too::

    app = RequestContextMiddleware(DomainErrorMiddleware(app, logger=logger))

or, in Starlette/FastAPI, ``app.add_middleware(DomainErrorMiddleware, logger=logger)``
then ``app.add_middleware(RequestContextMiddleware)`` (the last added is outermost).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from domain_errors import (
    GENERIC_MESSAGE,
    PROBLEM_JSON,
    DomainError,
    ErrorCode,
    to_http_response,
    to_problem_details,
)
from ports.context import bind_context
from ports.logger import Logger

from .redaction import redact_headers, redact_value

__all__ = [
    "RequestContextMiddleware",
    "DomainErrorMiddleware",
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
    else:
        response = to_http_response(exc)
        body = response.to_dict()
        status = response.status_code
        content_type = "application/json"
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
        if self.logger is None:
            return
        where: dict[str, Any] = {"method": scope.get("method", ""), "path": scope.get("path", "")}
        if isinstance(exc, DomainError) and exc.details:
            where["details"] = dict(exc.details)  # SQLSTATE, constraint...: for operators
        if isinstance(exc, DomainError) and exc.status < 500:
            self.logger.info("request failed", status=exc.status, error_code=exc.code, **where)
            return
        status = exc.status if isinstance(exc, DomainError) else 500
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
            for k, v in scope.get("headers", ())
        ]
        where["headers"] = redact_headers(headers)  # secret-looking values hidden
        self.logger.error("request failed", exc=exc, status=status, **where)

    async def _respond(self, scope: Scope, send: Send, exc: Exception) -> None:
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
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
