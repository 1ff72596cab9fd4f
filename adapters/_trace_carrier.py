"""Trace context beside an event, without the Event type knowing (stdlib only; ADR 0031).

The CloudEvents distributed-tracing extension carries W3C trace context as
``ce-traceparent`` / ``ce-tracestate``. :class:`~ports.events.Event` has no field for
it (it is not a fact of the domain), so it travels in two context variables:

- :data:`OUTGOING`: set by ``adapters.telemetry.TracedPublisher`` around the inner
  ``publish``; the event adapters put it in the headers of what they send (the NATS
  publisher through :func:`adapters.event_codec.encode`, the in-memory bus beside the
  stored event).
- :data:`INCOMING`: set by the event adapters for a delivery from the message's
  headers; ``adapters.telemetry.TracedSubscriber`` continues it in the handler's
  process span.

Both are ``None`` unless telemetry is on or a producer sent trace context: the cost
when off is one context-variable read per publish and per delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Final, TypeAlias
from urllib.parse import unquote

__all__ = [
    "Carrier",
    "OUTGOING",
    "INCOMING",
    "incoming",
    "carrier_from_headers",
    "current",
    "set_current_hook",
]

Carrier: TypeAlias = tuple[str, str | None]
"""``(traceparent, tracestate)``: W3C trace context as header values."""

OUTGOING: Final[ContextVar[Carrier | None]] = ContextVar("hexinfra_trace_out", default=None)
INCOMING: Final[ContextVar[Carrier | None]] = ContextVar("hexinfra_trace_in", default=None)


_current_hook: Callable[[], Carrier | None] | None = None


def set_current_hook(hook: Callable[[], Carrier | None] | None) -> None:
    """Install (``None``: remove) the function giving the current span's context;
    ``adapters.telemetry`` installs it, so that code which must not import
    OpenTelemetry (the outbox, storing it with each row) can read it."""
    global _current_hook  # noqa: PLW0603 - one process-wide hook, set at start-up
    _current_hook = hook


def current() -> Carrier | None:
    """The current span's context as ``(traceparent, tracestate)``; ``None`` outside
    a span or when telemetry is off (one global read)."""
    hook = _current_hook
    return None if hook is None else hook()


class incoming:
    """``INCOMING`` set to ``carrier`` for the ``with`` block; nothing when ``None``."""

    __slots__ = ("_carrier", "_token")

    def __init__(self, carrier: Carrier | None) -> None:
        self._carrier = carrier
        self._token: Token[Carrier | None] | None = None

    def __enter__(self) -> None:
        if self._carrier is not None or INCOMING.get() is not None:
            self._token = INCOMING.set(self._carrier)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            INCOMING.reset(self._token)
            self._token = None


def carrier_from_headers(lowered: Mapping[str, str] | None) -> Carrier | None:
    """The carrier in lower-cased ``ce-traceparent`` / ``ce-tracestate`` headers."""
    if not lowered:
        return None
    parent = lowered.get("ce-traceparent") or lowered.get("traceparent")
    if not parent:
        return None
    state = lowered.get("ce-tracestate") or lowered.get("tracestate") or None
    if "%" in parent or (state is not None and "%" in state):
        # percent-encoded as the CloudEvents HTTP binding says (a space after a comma
        # in tracestate travels as %20)
        parent = unquote(parent)
        state = unquote(state) if state is not None else None
    return parent.strip(), state
