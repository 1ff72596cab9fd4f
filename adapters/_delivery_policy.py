"""The delivery policy: what a subscription does with an event, on every adapter.

The NATS subscription and the in-memory bus both ask these pure functions, so that
they cannot drift apart on when an event is acked, retried or dead-lettered.
``attempt`` is always the number of the handler run (1-based), never the broker's
delivery count: a delivery the handler never saw uses up nothing.

A subscription also tells a :class:`DeliveryObserver` what it decided, when its
handler carries one (``TracedSubscriber``'s does: ADR 0031): metrics then count the
verdicts the subscription acted on, never a guess made beside it. The observer is
looked up once per subscription (:func:`observer_of`); without one a verdict costs
one ``is None`` test more.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Sequence
from typing import Final, Literal, Protocol

import attrs

from adapters._event_rules import (
    REASON_MAX_DELIVER,
    REASON_REJECTED,
    REASON_UNDECODABLE,
    backoff_delay,
    describe,
)
from adapters.redaction import redact_error_text
from ports.events import Reject

__all__ = [
    "Verdict",
    "ACK",
    "before_run",
    "after_run",
    "undecodable",
    "is_own_cancellation",
    "REASON_TIMEOUT",
    "DeliveryObserver",
    "observer_of",
    "carried_observer",
    "notify_ran",
    "notify_dead_lettered",
]

REASON_TIMEOUT: Final = "handler_timeout"


@attrs.frozen
class Verdict:
    """What to do with a delivery: ``ack``, ``retry`` after ``delay`` seconds, or
    ``dead_letter`` with ``reason`` and a redacted ``error`` text."""

    action: Literal["ack", "retry", "dead_letter"]
    delay: float = 0.0
    reason: str = ""
    error: str = ""


ACK: Final = Verdict("ack")


def before_run(attempt: int, max_deliver: int, *, owed: Verdict | None = None) -> Verdict | None:
    """``None`` when handler run ``attempt`` may happen; a dead letter when an earlier
    run already ended in one that was not stored (``owed``), or when the runs already
    recorded used up ``max_deliver``."""
    if owed is not None:
        return owed
    if attempt > max_deliver:
        return Verdict("dead_letter", reason=REASON_MAX_DELIVER, error="delivery limit reached")
    return None


def after_run(
    failure: BaseException | None,
    *,
    attempt: int,
    max_deliver: int,
    backoff: Sequence[float],
    timed_out: bool = False,
) -> Verdict:
    """The verdict on handler run ``attempt``: returned -> ack; raised
    :class:`~ports.events.Reject` -> dead letter at once; raised anything else (or
    ran past its ``handler_timeout``) -> retry after the backoff delay, or a dead
    letter when this was the ``max_deliver``-th run."""
    if failure is None:
        return ACK
    if isinstance(failure, Reject):
        return Verdict("dead_letter", reason=REASON_REJECTED, error=_safe_reason(failure))
    error = f"{REASON_TIMEOUT}: the handler ran too long" if timed_out else describe(failure)
    if attempt >= max_deliver:
        return Verdict("dead_letter", reason=REASON_MAX_DELIVER, error=error)
    return Verdict("retry", delay=backoff_delay(backoff, attempt), error=error)


def undecodable(problem: str) -> Verdict:
    """The verdict on a payload that does not decode: a dead letter at once."""
    return Verdict("dead_letter", reason=REASON_UNDECODABLE, error=describe_text(problem))


def describe_text(text: str) -> str:
    """``text`` redacted like a log line's error text (no secret leaves through a dead
    letter)."""
    return redact_error_text(text)


def _safe_reason(exc: Reject) -> str:
    try:
        return describe_text(str(exc.reason))
    except Exception:
        return "rejected by handler"


def is_own_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation of the running task itself (stop, shutdown),
    as opposed to a ``CancelledError`` a handler raised or leaked on its own."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class DeliveryObserver(Protocol):
    """Told by a subscription what its delivery policy decided (stdlib only: the
    ports and core adapters never import OpenTelemetry)."""

    def attached(self) -> None:
        """A subscription took this observer: it will report every verdict."""

    def ran(self, action: Literal["ack", "retry", "dead_letter"]) -> None:
        """A handler run was judged: ``action`` is the verdict's. Never called for a
        run the subscription takes back (its own cancellation: ``stop()``, shutdown)."""

    def dead_lettered(self, reason: str) -> None:
        """A dead letter was stored (after a run, without one, or for a message that
        does not decode), with its ``reason``."""


def observer_of(handler: object) -> DeliveryObserver | None:
    """The observer ``handler`` carries as ``delivery_observer`` (told it is
    :meth:`~DeliveryObserver.attached`), or ``None``. A subscription calls this once,
    before its first delivery."""
    observer = carried_observer(handler)
    if observer is not None:
        try:
            observer.attached()
        except Exception:  # metrics never break delivery: it counts for itself
            return None
    return observer


def carried_observer(handler: object) -> DeliveryObserver | None:
    """The observer ``handler`` carries as ``delivery_observer`` (a class attribute or
    property, or one set on the handler), or ``None``. Looked up statically first: a
    ``unittest.mock`` handler makes up any attribute it is asked for, and must not be
    taken for an observer (its calls would be recorded, an ``AsyncMock``'s never
    awaited)."""
    try:
        inspect.getattr_static(handler, "delivery_observer")
    except AttributeError:
        return None
    observer: DeliveryObserver | None = getattr(handler, "delivery_observer", None)
    return observer


def notify_ran(
    observer: DeliveryObserver | None, action: Literal["ack", "retry", "dead_letter"]
) -> None:
    """Tell ``observer`` (if any) a run was judged; an observer's failure never
    reaches the subscription."""
    if observer is not None:
        with contextlib.suppress(Exception):  # metrics never break delivery
            observer.ran(action)


def notify_dead_lettered(observer: DeliveryObserver | None, reason: str) -> None:
    """Tell ``observer`` (if any) a dead letter was stored; never raising."""
    if observer is not None:
        with contextlib.suppress(Exception):  # metrics never break delivery
            observer.dead_lettered(reason)
