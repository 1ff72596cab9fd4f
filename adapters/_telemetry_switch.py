"""Whether build_infrastructure wraps the ports in adapters.telemetry (stdlib only).

``OTEL_ENABLED``: ``false`` -> never; ``true`` -> always (``ConfigurationError`` naming
the ``otel`` extra when opentelemetry-api is missing); unset -> when opentelemetry-api
is installed and an SDK TracerProvider is configured in the process (ADR 0031).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from adapters._extras import installed, require_extra
from domain_errors import ConfigurationError
from ports.database import Database
from ports.events import Publisher, Subscriber

if TYPE_CHECKING:
    from adapters.outbox import OutboxRelay
    from adapters.telemetry import OutboxLagGauge, Telemetry

__all__ = ["telemetry_wanted", "default_telemetry", "traced_ports", "lag_gauge"]

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def telemetry_wanted(setting: str | None, *, given: bool = False) -> bool:
    """Whether to wrap the ports, from the ``OTEL_ENABLED`` value (``None``: unset);
    ``given``: the caller passed its own ``Telemetry`` (unset then means on)."""
    if setting is not None and setting.strip() != "":
        word = setting.strip().lower()
        if word in _FALSE:
            return False
        if word not in _TRUE:
            raise ConfigurationError(
                "setting OTEL_ENABLED must be true or false",
                details={"key": "OTEL_ENABLED", "expected": ["true", "false"]},
            )
        require_extra("otel", "OTEL_ENABLED=true")
        return True
    if given:
        return True
    if not installed("opentelemetry.trace"):
        return False
    from adapters.telemetry import sdk_configured

    return sdk_configured()


def default_telemetry() -> Telemetry:
    """A ``Telemetry`` on the global providers; only call it when
    :func:`telemetry_wanted` said so."""
    from adapters.telemetry import Telemetry

    return Telemetry()


def traced_ports(
    database: Database,
    publisher: Publisher,
    subscriber: Subscriber,
    telemetry: Telemetry,
) -> tuple[Database, Publisher, Subscriber]:
    """The three ports wrapped in ``adapters.telemetry`` (``telemetry``'s providers),
    with log lines joined to traces and the current span's context readable by the
    outbox (``adapters._trace_carrier.current()``); only call it when
    :func:`telemetry_wanted` said so."""
    from adapters.telemetry import (
        TracedDatabase,
        TracedPublisher,
        TracedSubscriber,
        expose_current_context,
        join_logs_to_traces,
    )

    join_logs_to_traces()
    expose_current_context()
    return (
        TracedDatabase(database, telemetry=telemetry),
        TracedPublisher(publisher, telemetry=telemetry),
        TracedSubscriber(subscriber, telemetry=telemetry),
    )


def lag_gauge(relay: OutboxRelay, telemetry: Telemetry) -> OutboxLagGauge:
    """The ``hexinfra.outbox.lag`` gauge sampling ``relay`` (``telemetry``'s meter);
    only call it when :func:`telemetry_wanted` said so."""
    from adapters.telemetry import OutboxLagGauge

    return OutboxLagGauge(relay, telemetry=telemetry)
