"""The orders service's HTTP edge: a tiny pure-ASGI router (no framework needed).

Routes: ``POST /orders``, ``GET /orders/{id}``, ``GET /organizations/{id}/totals``,
``GET /health``; the matched template goes in ``scope["route"]`` (as Starlette does) for
the HTTP server span's ``http.route``. Errors are raised as domain errors and rendered by
:class:`adapters.asgi.DomainErrorMiddleware`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from adapters.asgi import ASGIApp, DomainErrorMiddleware, RequestContextMiddleware
from domain_errors import BadRequest, NotFound
from ports.logger import Logger

from .domain import OrderService

__all__ = ["create_app"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
HealthProbe = Callable[[], Awaitable[dict[str, Any]]]

_MAX_BODY = 64 * 1024


async def _read_json(receive: Receive) -> Any:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > _MAX_BODY:
            raise BadRequest("request body is too large")
        if not message.get("more_body"):
            break
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise BadRequest("request body is not valid JSON") from exc


async def _send_json(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _Route(NamedTuple):
    path: str


def _route_of(parts: list[str]) -> _Route | None:
    """The route template the path matches, for the server span's ``http.route``."""
    if parts in (["orders"], ["health"]):
        return _Route("/" + parts[0])
    if len(parts) == 2 and parts[0] == "orders":
        return _Route("/orders/{order_id}")
    if len(parts) == 3 and parts[::2] == ["organizations", "totals"]:
        return _Route("/organizations/{organization_id}/totals")
    return None


def create_app(service: OrderService, *, logger: Logger, health: HealthProbe) -> ASGIApp:
    """The ASGI app, wrapped in the request-context and error middleware."""

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method, parts = scope["method"], [p for p in scope["path"].split("/") if p]
        route = _route_of(parts)
        if route is not None:  # the server span's http.route (as Starlette's scope["route"])
            scope["route"] = route
        if method == "POST" and parts == ["orders"]:
            body = await _read_json(receive)
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            order = await service.place_order(
                order_id=body.get("id"),
                organization_id=body.get("organization_id"),
                customer=body.get("customer"),
                amount_cents=body.get("amount_cents"),
            )
            await _send_json(send, 201, order.to_dict())
        elif method == "GET" and len(parts) == 2 and parts[0] == "orders":
            await _send_json(send, 200, (await service.get_order(parts[1])).to_dict())
        elif method == "GET" and len(parts) == 3 and parts[::2] == ["organizations", "totals"]:
            totals = await service.totals(parts[1])
            await _send_json(
                send,
                200,
                {
                    "organization_id": totals.organization_id,
                    "orders": totals.orders,
                    "amount_cents": totals.amount_cents,
                },
            )
        elif method == "GET" and parts == ["health"]:
            report = await health()
            await _send_json(send, 200 if report.get("healthy") else 503, report)
        else:
            raise NotFound(f"no route for {method} {scope['path']}")

    return RequestContextMiddleware(DomainErrorMiddleware(router, logger=logger), logger=logger)  # type: ignore[arg-type]
