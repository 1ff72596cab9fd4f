"""The tracer, meter, propagator and metric instruments shared by the wrappers."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from adapters._trace_carrier import Carrier

__all__ = ["Telemetry", "SCOPE", "inject", "extract", "SharedGauge"]

SCOPE: Final = "hexinfra"
"""The instrumentation scope of every span and instrument."""

_PROPAGATOR: Final = TraceContextTextMapPropagator()

SECONDS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Bucket boundaries advised for the duration histograms (the SDK's default ones,
0 to 10,000, are made for milliseconds; ours are in seconds, as the conventions ask)."""


class _Global:
    """The key of gauges made on the global meter provider."""


_GLOBAL: Final = _Global()


class Telemetry:
    """A tracer and the ``hexinfra.*`` instruments, from the given providers (the global
    ones when ``None``)."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self.meter_provider = provider
        # The global provider is one key, whether it was the API's proxy (which hands
        # its instruments on to the SDK's once set) or the SDK's when this was built.
        self._gauges_key: Any = provider if meter_provider is not None else _GLOBAL
        meter = provider.get_meter(SCOPE)
        self.meter = meter
        self.query_duration = meter.create_histogram(
            "hexinfra.db.query.duration",
            unit="s",
            description="Duration of database statements",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.published = meter.create_counter(
            "hexinfra.events.published", unit="{event}", description="Events published"
        )
        self.handled = meter.create_counter(
            "hexinfra.events.handled",
            unit="{event}",
            description=(
                "Handler runs by the outcome the subscription acted on (ack, retry, "
                "dead_letter: a Reject and the last failed attempt); a run cut short "
                "by stop() is taken back and not counted"
            ),
        )
        self.handler_duration = meter.create_histogram(
            "hexinfra.events.handler.duration",
            unit="s",
            description="Duration of every handler run (one cut short by stop() too)",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.dead_letters = meter.create_counter(
            "hexinfra.events.dead_letters",
            unit="{event}",
            description=(
                "Dead letters stored, by reason (rejected, max_deliver, undecodable): "
                "also those stored without a handler run"
            ),
        )

    def shared_gauge(self, name: str, *, unit: str, description: str, combine: str) -> SharedGauge:
        """The one :class:`SharedGauge` ``name`` of this meter provider (created on
        first use): every wrapper over the same provider adds its source to it, so a
        gauge is registered once however many wrappers report into it."""
        return SharedGauge.of(
            self._gauges_key,
            self.meter,
            name,
            unit=unit,
            description=description,
            combine=combine,
        )


_Reader = Callable[[Any], list[tuple[float, Mapping[str, Any]]]]

_SHARED: weakref.WeakKeyDictionary[Any, dict[str, SharedGauge]] = weakref.WeakKeyDictionary()
_SHARED_STRONG: dict[int, tuple[Any, dict[str, SharedGauge]]] = {}
_SHARED_LOCK = threading.Lock()


class SharedGauge:
    """One observable gauge per meter provider and name, reporting every source added
    to it. The SDK keeps the first instrument of a name and drops a later one's
    callbacks, so a second gauge of the same name would never be read: sources are
    added here instead. A source is held weakly (a discarded database or relay stops
    reporting) and keyed by identity (adding one twice is adding it once). Values of
    sources with the same attributes are combined by ``combine``: ``sum`` (pools) or
    ``max`` (lags)."""

    def __init__(
        self, meter: metrics.Meter, name: str, *, unit: str, description: str, combine: str
    ) -> None:
        if combine not in ("sum", "max"):
            raise ValueError("combine must be 'sum' or 'max'")
        self.name = name
        self._combine = combine
        self._sources: dict[int, tuple[Callable[[], Any], _Reader]] = {}
        self._lock = threading.Lock()
        meter.create_observable_gauge(name, [self._observe], unit=unit, description=description)

    @classmethod
    def of(
        cls,
        provider: Any,
        meter: metrics.Meter,
        name: str,
        *,
        unit: str,
        description: str,
        combine: str,
    ) -> SharedGauge:
        with _SHARED_LOCK:
            try:
                gauges = _SHARED.setdefault(provider, {})
            except TypeError:  # a provider that takes no weak reference: kept for good
                gauges = _SHARED_STRONG.setdefault(id(provider), (provider, {}))[1]
            gauge = gauges.get(name)
            if gauge is None:
                gauge = gauges[name] = cls(
                    meter, name, unit=unit, description=description, combine=combine
                )
            return gauge

    def add(self, source: object, read: _Reader) -> bool:
        """Report ``read(source)`` (a list of ``(value, attributes)``) at each
        collection; ``False`` (nothing added) when ``source`` is already here."""
        key = id(source)
        try:
            ref: Callable[[], Any] = weakref.ref(source, lambda _: self._drop(key))
        except TypeError:
            ref = lambda: source  # noqa: E731 - a source without weak references
        with self._lock:
            held = self._sources.get(key)
            if held is not None and held[0]() is source:
                return False
            self._sources[key] = (ref, read)
        return True

    def __contains__(self, source: object) -> bool:
        held = self._sources.get(id(source))
        return held is not None and held[0]() is source

    def _drop(self, key: int) -> None:
        with self._lock:
            held = self._sources.get(key)
            if held is not None and held[0]() is None:
                del self._sources[key]

    def _observe(self, _: CallbackOptions) -> list[Observation]:
        with self._lock:
            sources = list(self._sources.values())
        combined: dict[frozenset[tuple[str, Any]], tuple[float, Mapping[str, Any]]] = {}
        for ref, read in sources:
            source = ref()
            if source is None:
                continue
            try:
                values = read(source)
            except Exception:  # noqa: S112 - one broken source never hides the others
                continue
            for value, attributes in values:
                key = frozenset(attributes.items())
                held = combined.get(key)
                total = value
                if held is not None:
                    total = held[0] + value if self._combine == "sum" else max(held[0], value)
                combined[key] = (total, attributes)
        return [Observation(value, dict(attributes)) for value, attributes in combined.values()]


def inject() -> Carrier | None:
    """The current span's context as ``(traceparent, tracestate)``; ``None`` outside
    a valid span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    parent = carrier.get("traceparent")
    if not parent:
        return None
    return parent, carrier.get("tracestate") or None


def extract(carrier: Carrier | None) -> trace.SpanContext | None:
    """The remote span context in ``carrier``; ``None`` when absent or malformed."""
    if carrier is None:
        return None
    headers: Mapping[str, str] = (
        {"traceparent": carrier[0], "tracestate": carrier[1]}
        if carrier[1]
        else {"traceparent": carrier[0]}
    )
    ctx = _PROPAGATOR.extract(headers, context=otel_context.Context())
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None
