"""The HTTP edge as pure ASGI middleware: request context and error responses.

Works with any ASGI framework (Starlette, FastAPI, Litestar...) and needs none at
run time. Stack them with the context outermost, so that error responses carry the
request id too::

    app = RequestContextMiddleware(DomainErrorMiddleware(app, logger=logger))

or, in Starlette/FastAPI, ``app.add_middleware(DomainErrorMiddleware, logger=logger)``
then ``app.add_middleware(RequestContextMiddleware)`` (the last added is outermost).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from domain_errors import PROBLEM_JSON, DomainError, to_http_response, to_problem_details
from ports.context import bind_context
from ports.logger import Logger

__all__ = [
    "RequestContextMiddleware",
    "DomainErrorMiddleware",
    "REQUEST_ID_HEADER",
    "ASGIApp",
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


class DomainErrorMiddleware:
    """Turns exceptions into JSON error responses a client may see.

    - A :class:`domain_errors.DomainError` -> its status and the ``ErrorResponse``
      body ``{"status_code", "error_code", "message"}``; a 5xx shows a generic
      message, never its own.
    - With ``Accept: application/problem+json`` -> an RFC 9457 body with that
      content type instead.
    - Any other exception -> 500 with the generic body; it is logged at ``error``
      with its stack (when a logger is given) and its message never reaches the body.
    - 4xx errors are logged at ``info``; 5xx at ``error`` with the stack.
    - If the response has already started, nothing can be sent: the error is logged
      and re-raised for the server to close the connection.
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
            self._log(scope, exc)
            if started:
                raise
            await self._respond(scope, send, exc)

    def _log(self, scope: Scope, exc: Exception) -> None:
        if self.logger is None:
            return
        where = {"method": scope.get("method", ""), "path": scope.get("path", "")}
        if isinstance(exc, DomainError) and exc.status < 500:
            self.logger.info("request failed", status=exc.status, error_code=exc.code, **where)
            return
        status = exc.status if isinstance(exc, DomainError) else 500
        self.logger.error("request failed", exc=exc, status=status, **where)

    async def _respond(self, scope: Scope, send: Send, exc: Exception) -> None:
        if _wants_problem_json(scope):
            body = to_problem_details(exc, instance=scope.get("path") or None)
            status = int(body["status"])
            content_type = PROBLEM_JSON
        else:
            response = to_http_response(exc)
            body = response.to_dict()
            status = response.status_code
            content_type = "application/json"
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(payload)).encode()),
        ]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
