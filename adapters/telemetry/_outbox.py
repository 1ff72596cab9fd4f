"""OutboxLagGauge: ``hexinfra.outbox.lag``, the age of the oldest unsent outbox row."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, Final, Protocol

from opentelemetry import metrics

from ._instruments import Telemetry

__all__ = ["OutboxLagGauge"]

_NO_ATTRIBUTES: Final[Mapping[str, Any]] = {}


class _Lagging(Protocol):
    async def lag(self) -> float: ...


class OutboxLagGauge:
    """The ``hexinfra.outbox.lag`` gauge (seconds) for ``relay`` (anything with
    ``async lag()``, e.g. :class:`adapters.outbox.OutboxRelay`).

    Metric readers call gauges synchronously, from their own thread, while the lag is
    a database query: :meth:`sample` reads it (``start()`` does so every ``interval``
    seconds in a task) and the gauge reports the last sample. Nothing is reported
    before the first sample; a failed sample keeps the previous value. Several gauges
    over one meter provider (one per relay) report the largest lag."""

    def __init__(
        self,
        relay: _Lagging,
        *,
        interval: float = 5.0,
        meter_provider: metrics.MeterProvider | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._relay = relay
        self.interval = interval
        self.value: float | None = None
        self._task: asyncio.Task[None] | None = None
        tel = telemetry or Telemetry(meter_provider=meter_provider)
        self._gauge = tel.shared_gauge(
            "hexinfra.outbox.lag",
            unit="s",
            description="Age of the oldest unsent outbox row (the largest of the relays')",
            combine="max",
        )
        self._gauge.add(self, OutboxLagGauge._observe)

    def _observe(self) -> list[tuple[float, Mapping[str, Any]]]:
        value = self.value
        return [] if value is None else [(value, _NO_ATTRIBUTES)]

    async def sample(self) -> float | None:
        """Read the relay's lag now; the new value, or ``None`` when it failed."""
        try:
            self.value = float(await self._relay.lag())
        except Exception:
            return None
        return self.value

    async def start(self) -> None:
        """Sample every ``interval`` seconds until :meth:`stop`."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
