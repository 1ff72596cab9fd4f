"""The composition-root helper: every adapter a service needs, from one ConfigSource.

::

    config = EnvConfig()
    infra = build_infrastructure(config)      # no I/O yet
    async with infra:                         # connects database, then events
        await infra.database.fetch_value("SELECT 1")
        await infra.publisher.publish(event)
        print(await infra.health())
    # closed in reverse order, also when a connect failed half way

``INFRA_ADAPTERS`` chooses ``memory`` (SqliteDatabase + InMemoryEventBus) or ``real``
(PostgresDatabase + NATS JetStream); unset, it is ``real`` when both ``DATABASE_URL``
and ``NATS_URL`` are set and ``memory`` otherwise. The real adapters' modules are
imported only in ``real`` mode, so a memory-mode service never loads psycopg or nats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import attrs

from domain_errors import ConfigurationError, DomainError
from ports.clock import Clock, SystemClock
from ports.config import ConfigSource
from ports.database import Database
from ports.events import Publisher, Subscriber
from ports.logger import Logger

__all__ = [
    "Infrastructure",
    "ComponentHealth",
    "HealthReport",
    "build_infrastructure",
    "adapter_mode",
]

Mode = Literal["memory", "real"]


class _Component(Protocol):
    async def connect(self) -> None: ...

    async def health_check(self) -> None: ...

    async def close(self, timeout: float = ...) -> None: ...


@attrs.frozen
class ComponentHealth:
    """One component's health: ``ok`` and how long the check took."""

    name: str
    ok: bool
    latency_ms: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: ``{"status": "ok"|"down", "latency_ms", "error"?}``."""
        body: dict[str, Any] = {
            "status": "ok" if self.ok else "down",
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.error is not None:
            body["error"] = self.error
        return body


@attrs.frozen
class HealthReport:
    """Every component's health; ``healthy`` only if all are ok."""

    mode: str
    components: Mapping[str, ComponentHealth]

    @property
    def healthy(self) -> bool:
        """Whether every component answered its health check."""
        return all(c.ok for c in self.components.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON shape for a ``/health`` endpoint."""
        return {
            "healthy": self.healthy,
            "mode": self.mode,
            "components": {name: c.to_dict() for name, c in self.components.items()},
        }


@attrs.define(kw_only=True)
class Infrastructure:
    """The adapters of one service, connected and closed together.

    ``async with infra`` connects the components in order (database, then events)
    and closes them in reverse on exit. If a connect fails, the components already
    connected are closed before the error propagates: nothing is left open.
    Closing is idempotent and never raises; a component that fails to close is
    logged at ``error``.
    """

    config: ConfigSource
    logger: Logger
    clock: Clock
    database: Database
    publisher: Publisher
    subscriber: Subscriber
    mode: Mode
    close_timeout: float = 10.0
    health_timeout: float = 5.0
    _components: list[tuple[str, _Component]] = attrs.field(alias="components")
    _connected: list[tuple[str, _Component]] = attrs.field(factory=list, init=False)

    async def connect(self) -> None:
        """Connect every component in order; on failure, close those already open."""
        for name, component in self._components:
            try:
                await component.connect()
            except BaseException:
                self.logger.error("infrastructure connect failed", component=name)
                await self.close()
                raise
            self._connected.append((name, component))
        self.logger.info(
            "infrastructure connected",
            mode=self.mode,
            components=[name for name, _ in self._components],
        )

    async def close(self) -> None:
        """Close every connected component in reverse order. Idempotent."""
        while self._connected:
            name, component = self._connected.pop()
            try:
                await component.close(self.close_timeout)
            except Exception as exc:
                self.logger.error("infrastructure close failed", exc=exc, component=name)

    async def health(self) -> HealthReport:
        """Check every component concurrently, each bounded by ``health_timeout``."""
        results = await asyncio.gather(
            *(self._check(name, component) for name, component in self._components)
        )
        return HealthReport(mode=self.mode, components={r.name: r for r in results})

    async def _check(self, name: str, component: _Component) -> ComponentHealth:
        began = time.perf_counter()
        try:
            await asyncio.wait_for(component.health_check(), self.health_timeout)
        except TimeoutError:
            error: str | None = f"no answer within {self.health_timeout:g} s"
        except DomainError as exc:
            error = exc.code
        except Exception as exc:
            error = type(exc).__name__
        else:
            error = None
        return ComponentHealth(name, error is None, (time.perf_counter() - began) * 1000, error)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def adapter_mode(config: ConfigSource) -> Mode:
    """``INFRA_ADAPTERS`` if set (``memory`` / ``real``), else ``real`` when both
    ``DATABASE_URL`` and ``NATS_URL`` are set, else ``memory``."""
    chosen = (config.get("INFRA_ADAPTERS") or "").strip().lower()
    if chosen in ("memory", "real"):
        return "memory" if chosen == "memory" else "real"
    if chosen:
        raise ConfigurationError(
            "INFRA_ADAPTERS must be 'memory' or 'real'", details={"key": "INFRA_ADAPTERS"}
        )
    return "real" if config.is_set("DATABASE_URL") and config.is_set("NATS_URL") else "memory"


def build_infrastructure(
    config: ConfigSource,
    *,
    memory: bool | None = None,
    logger: Logger | None = None,
    clock: Clock | None = None,
) -> Infrastructure:
    """Build (without connecting) every adapter a service needs from ``config``.

    ``memory=None`` reads :func:`adapter_mode`; ``True``/``False`` force it. The
    logger defaults to :func:`adapters.structlog_logger.configure_logging`
    (``SERVICE_NAME``, ``LOG_LEVEL``, ``LOG_FORMAT``), the clock to the system
    clock. In ``real`` mode ``DATABASE_URL`` and ``NATS_URL`` are validated up
    front, naming every missing key in one ``ConfigurationError``.
    """
    mode: Mode = adapter_mode(config) if memory is None else ("memory" if memory else "real")
    if logger is None:
        from .structlog_logger import configure_logging

        logger = configure_logging(config)
    clock = clock if clock is not None else SystemClock()
    components: list[tuple[str, _Component]]
    database: Database
    publisher: Publisher
    subscriber: Subscriber
    if mode == "memory":
        from .memory import InMemoryEventBus, SqliteDatabase

        sqlite = SqliteDatabase.from_config(config, logger=logger, clock=clock)
        bus = InMemoryEventBus.from_config(config, logger=logger, clock=clock)
        database, publisher, subscriber = sqlite, bus, bus
        components = [("database", sqlite), ("events", bus)]
    else:
        config.validate(["DATABASE_URL", "NATS_URL"])
        from .nats_events import NatsConnection, NatsPublisher, NatsSubscriber
        from .postgres import PostgresDatabase

        postgres = PostgresDatabase.from_config(config, logger=logger, clock=clock)
        connection = NatsConnection.from_config(config, logger=logger, clock=clock)
        database = postgres
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        components = [("database", postgres), ("events", connection)]
    return Infrastructure(
        config=config,
        logger=logger,
        clock=clock,
        database=database,
        publisher=publisher,
        subscriber=subscriber,
        mode=mode,
        components=components,
    )
