"""The composition-root helper: every adapter a service needs, from one ConfigSource.

::

    config = EnvConfig()
    infra = build_infrastructure(config)      # no I/O yet
    async with infra:                         # connects database, events, outbox relay
        async with infra.database.transaction() as tx:
            await tx.execute("INSERT ...")
            await infra.outbox.add(tx, event)  # published once tx commits
        print(await infra.health())
    # closed in reverse order (relay first), also when a connect failed half way

``INFRA_ADAPTERS`` chooses ``memory`` (SqliteDatabase + InMemoryEventBus) or ``real``
(PostgresDatabase + NATS JetStream); anything else is a ``ConfigurationError`` naming
the key and both values. Unset (or blank), the URLs decide, failing loud rather than
falling back to memory:

- both ``DATABASE_URL`` and ``NATS_URL`` set: ``real``;
- one without the other: ``ConfigurationError`` naming the missing key (a misspelt
  ``NAST_URL`` must never put a service on in-memory storage);
- neither: ``memory``, unless ``APP_ENV`` is ``production`` (or ``prod``), where it is a
  ``ConfigurationError`` naming both keys.

A URL counts as set when the config has a value for it (defaults included, even an
empty one: real mode then refuses the empty URL). Memory mode logs a warning when
the infrastructure connects (data is lost at restart) and ``health()`` reports the
mode. Every numeric setting of the chosen adapters is checked when they are built
(ADR 0025). The real adapters' modules are imported only in ``real`` mode, so a
memory-mode service never loads psycopg or nats.

The outbox (ADR 0030): ``infra.outbox`` is an :class:`adapters.outbox.SqlOutbox` on
``infra.database``. With ``EVENTS_OUTBOX`` true (a boolean word; the default, in both
modes, so a service behaves the same in memory), connecting also installs the outbox
and inbox tables (:func:`adapters.outbox.install`, namespace ``hexinfra``) and starts
``infra.relay`` (an :class:`adapters.outbox.OutboxRelay` from ``infra.database`` to
``infra.publisher``) as the last component; closing stops it first, before the
publisher and the database close. ``EVENTS_OUTBOX_POLL_S`` is its polling interval
(1.0 s on PostgreSQL, where LISTEN/NOTIFY wakes it at each commit; 0.05 s on the
SQLite fake, which has no NOTIFY). ``health()`` reports it as component ``outbox``
with ``lag_s`` (the oldest unsent row's age) and ``published``: down when the relay
is not running or ``lag_s`` exceeds ``EVENTS_OUTBOX_MAX_LAG_S`` (60 s; events have
not been reaching the broker for that long). With ``EVENTS_OUTBOX`` false, nothing
is installed or started and ``infra.relay`` is ``None`` (a relay may run elsewhere:
``infra.outbox`` still writes rows once the tables exist).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self

import attrs

from domain_errors import ConfigurationError, DomainError, ServiceUnavailable
from ports.clock import Clock, SystemClock
from ports.config import ConfigSource
from ports.database import Database
from ports.events import Publisher, Subscriber
from ports.logger import Logger

from ._config_base import DAY, HOUR, NumberRule, check_number
from .outbox import OutboxRelay, SqlOutbox, install

if TYPE_CHECKING:
    from .telemetry import Telemetry

__all__ = [
    "Infrastructure",
    "ComponentHealth",
    "HealthReport",
    "build_infrastructure",
    "adapter_mode",
]

Mode = Literal["memory", "real"]

_URLS: Final = ("DATABASE_URL", "NATS_URL")
_PRODUCTION: Final = frozenset({"production", "prod"})
_OUTBOX_POLL: Final = NumberRule(0.001, HOUR)
_OUTBOX_MAX_LAG: Final = NumberRule(0.0, DAY, low_open=True)


class _Component(Protocol):
    async def connect(self) -> None: ...

    async def health_check(self) -> object: ...

    async def close(self, timeout: float = ...) -> None: ...


class _Unhealthy(ServiceUnavailable):
    """A failed health check that still has figures to report (``report``)."""

    def __init__(self, message: str, report: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.report = dict(report)


class _Sampler(Protocol):
    """What the relay component needs of a gauge that samples it (OutboxLagGauge)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _RelayComponent:
    """The outbox relay as the last component: ``connect`` installs the outbox and
    inbox tables and starts the relay, ``close`` stops it (before the publisher and
    the database close), ``health_check`` returns its figures."""

    def __init__(
        self,
        relay: OutboxRelay,
        database: Database,
        *,
        logger: Logger,
        clock: Clock,
        max_lag: float,
    ) -> None:
        self.relay = relay
        self._database = database
        self._logger = logger
        self._clock = clock
        self.max_lag = max_lag
        self.lag_gauge: _Sampler | None = None
        """The ``hexinfra.outbox.lag`` gauge, when telemetry is on (ADR 0031)."""

    async def connect(self) -> None:
        await install(self._database, logger=self._logger, clock=self._clock)
        await self.relay.start()
        if self.lag_gauge is not None:
            await self.lag_gauge.start()

    async def health_check(self) -> Mapping[str, Any]:
        report = {
            "lag_s": round(await self.relay.lag(), 3),
            "max_lag_s": self.max_lag,
            "published": self.relay.published,
        }
        if not self.relay.running:
            raise _Unhealthy("the outbox relay is not running", report)
        if report["lag_s"] > self.max_lag:
            raise _Unhealthy("the outbox relay lags behind", report)
        return report

    async def close(self, timeout: float = 10.0) -> None:
        if self.lag_gauge is not None:
            await self.lag_gauge.stop()
        await self.relay.stop(timeout)


@attrs.frozen
class ComponentHealth:
    """One component's health: ``ok``, how long the check took, and the figures a
    component reports (``details``: the outbox relay's ``lag_s``, ``published``)."""

    name: str
    ok: bool
    latency_ms: float
    error: str | None = None
    details: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: ``{"status": "ok"|"down", "latency_ms", "error"?, ...details}``."""
        body: dict[str, Any] = {
            "status": "ok" if self.ok else "down",
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.error is not None:
            body["error"] = self.error
        if self.details:
            body.update({k: v for k, v in self.details.items() if k not in body})
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

    ``async with infra`` connects the components in order (database, events, then
    the outbox relay when ``relay`` is set) and closes them in reverse on exit. If a
    connect fails, the components already connected are closed before the error
    propagates: nothing is left open.
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
    outbox: SqlOutbox = attrs.field(
        default=attrs.Factory(lambda self: SqlOutbox(self.database), takes_self=True)
    )
    """Writes events in the caller's transaction (:class:`ports.outbox.Outbox`)."""
    relay: OutboxRelay | None = None
    """The relay publishing the outbox, run as component ``outbox`` (``EVENTS_OUTBOX``);
    ``None`` when off."""
    telemetry: Telemetry | None = None
    """The tracer and instruments the ports are wrapped with (``adapters.telemetry``,
    ADR 0031); ``None`` when telemetry is off. The HTTP edge opens its server span
    with it."""
    reason: str = ""
    """Why this mode was chosen (``INFRA_ADAPTERS=memory``, ``no DATABASE_URL or
    NATS_URL``...), logged at start."""
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
        if self.mode == "memory":
            self.logger.warning(
                "infrastructure on in-memory adapters: nothing is stored outside this "
                "process, every write is lost at restart",
                mode=self.mode,
                reason=self.reason,
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
        details: Mapping[str, Any] | None = None
        try:
            result = await asyncio.wait_for(component.health_check(), self.health_timeout)
        except TimeoutError:
            error: str | None = f"no answer within {self.health_timeout:g} s"
        except _Unhealthy as exc:
            error, details = exc.code, exc.report
        except DomainError as exc:
            error = exc.code
        except Exception as exc:
            error = type(exc).__name__
        else:
            error = None
            details = result if isinstance(result, Mapping) else None
        elapsed = (time.perf_counter() - began) * 1000
        return ComponentHealth(name, error is None, elapsed, error, details)

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
    """The mode ``config`` asks for, by the rules in the module docstring.

    ``ConfigurationError`` (naming the keys, never their values) when ``INFRA_ADAPTERS``
    is neither ``memory`` nor ``real``, when one URL is set without the other, or when
    neither is set and ``APP_ENV`` is ``production``.
    """
    return _choose(config)[0]


def _env_name(config: ConfigSource, key: str) -> str:
    env_name = getattr(config, "env_name", None)
    return str(env_name(key)) if callable(env_name) else key


def _app_env(config: ConfigSource) -> str:
    # EnvConfig reads APP_ENV unprefixed (and from .env); other sources hold it as a key.
    environment = getattr(config, "environment", None)
    if not isinstance(environment, str):
        environment = config.get("APP_ENV") or ""
    return environment.strip().lower()


def _choose(config: ConfigSource) -> tuple[Mode, str]:
    """(mode, why) from ``config``."""
    key = _env_name(config, "INFRA_ADAPTERS")
    chosen = (config.get("INFRA_ADAPTERS") or "").strip().lower()
    if chosen == "memory":
        return "memory", f"{key}=memory"
    if chosen == "real":
        return "real", f"{key}=real"
    if chosen:
        raise ConfigurationError(
            f"setting {key} must be 'memory' or 'real' (or unset: chosen from "
            f"{' and '.join(_env_name(config, url) for url in _URLS)})",
            details={"key": key, "expected": ["memory", "real"]},
        )
    names = [_env_name(config, url) for url in _URLS]
    present = [config.get(url) is not None for url in _URLS]
    if all(present):
        return "real", f"{names[0]} and {names[1]} are set"
    if any(present):
        missing, given = (names[1], names[0]) if present[0] else (names[0], names[1])
        raise ConfigurationError(
            f"setting {missing} is missing while {given} is set: set both for the real "
            f"adapters, or {key}=memory to run in memory on purpose (a misspelt key must "
            "not put a service on in-memory storage)",
            details={"key": missing, "missing": [missing]},
        )
    if _app_env(config) in _PRODUCTION:
        raise ConfigurationError(
            f"settings {names[0]} and {names[1]} are missing and APP_ENV is production: "
            f"set both, or {key}=memory to run in memory on purpose",
            details={"key": names[0], "missing": names},
        )
    return "memory", f"neither {names[0]} nor {names[1]} is set"


def build_infrastructure(
    config: ConfigSource,
    *,
    memory: bool | None = None,
    logger: Logger | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
) -> Infrastructure:
    """Build (without connecting) every adapter a service needs from ``config``.

    ``memory=None`` reads :func:`adapter_mode` (which fails loud on one URL without
    the other, see the module docstring); ``True``/``False`` force it. The
    logger defaults to :func:`adapters.structlog_logger.configure_logging`
    (``SERVICE_NAME``, ``LOG_LEVEL``, ``LOG_FORMAT``), the clock to the system
    clock. In ``real`` mode ``DATABASE_URL`` and ``NATS_URL`` are validated up
    front, naming every missing key in one ``ConfigurationError``. ``EVENTS_OUTBOX``
    (default true) adds the outbox relay (see the module docstring). ``telemetry``
    (an ``adapters.telemetry.Telemetry``) gives the wrappers its tracer and meter
    providers instead of the global ones, and turns them on unless ``OTEL_ENABLED`` is
    false.
    """
    if memory is None:
        mode, reason = _choose(config)
    else:
        mode, reason = ("memory", "memory=True") if memory else ("real", "memory=False")
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
    # --- OpenTelemetry (ADR 0031): OTEL_ENABLED; unset, on when an SDK is configured.
    # The relay polls through the unwrapped database (no span per poll) and publishes
    # through the traced publisher.
    polled = database
    from ._telemetry_switch import default_telemetry, lag_gauge, telemetry_wanted, traced_ports

    if telemetry_wanted(config.get("OTEL_ENABLED"), given=telemetry is not None):
        telemetry = telemetry if telemetry is not None else default_telemetry()
        database, publisher, subscriber = traced_ports(database, publisher, subscriber, telemetry)
    else:
        telemetry = None
    # --- end OpenTelemetry
    relay = _relay(config, mode, database=polled, publisher=publisher, logger=logger, clock=clock)
    if relay is not None:
        if telemetry is not None:
            relay.lag_gauge = lag_gauge(relay.relay, telemetry)
        components.append(("outbox", relay))
    return Infrastructure(
        config=config,
        logger=logger,
        clock=clock,
        database=database,
        publisher=publisher,
        subscriber=subscriber,
        mode=mode,
        outbox=SqlOutbox(database, clock=clock),
        relay=None if relay is None else relay.relay,
        telemetry=telemetry,
        reason=reason,
        components=components,
    )


def _relay(
    config: ConfigSource,
    mode: Mode,
    *,
    database: Database,
    publisher: Publisher,
    logger: Logger,
    clock: Clock,
) -> _RelayComponent | None:
    """The outbox relay component, or ``None`` when ``EVENTS_OUTBOX`` is false."""
    if not config.get_bool("EVENTS_OUTBOX", True):
        return None
    poll = config.get_float("EVENTS_OUTBOX_POLL_S", 1.0 if mode == "real" else 0.05)
    check_number("EVENTS_OUTBOX_POLL_S", poll, _OUTBOX_POLL)
    max_lag = config.get_float("EVENTS_OUTBOX_MAX_LAG_S", 60.0)
    check_number("EVENTS_OUTBOX_MAX_LAG_S", max_lag, _OUTBOX_MAX_LAG)
    relay = OutboxRelay(database, publisher, logger=logger, clock=clock, poll_interval=poll)
    return _RelayComponent(relay, database, logger=logger, clock=clock, max_lag=max_lag)
