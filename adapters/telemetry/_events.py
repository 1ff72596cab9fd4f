"""TracedPublisher and TracedSubscriber: messaging spans, trace context and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final, Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from adapters._delivery_policy import (
    DeliveryObserver,
    after_run,
    carried_observer,
    is_own_cancellation,
    notify_dead_lettered,
    notify_ran,
)
from adapters._trace_carrier import INCOMING, OUTGOING
from ports.context import current_context
from ports.events import (
    DEFAULT_ACK_WAIT,
    DEFAULT_BACKOFF,
    DEFAULT_MAX_DELIVER,
    Event,
    Handler,
    PublishAck,
    Publisher,
    Subscriber,
    Subscription,
)

from ._instruments import Telemetry, extract, inject

__all__ = ["TracedPublisher", "TracedSubscriber"]


class TracedPublisher:
    """The :class:`~ports.events.Publisher` ``publisher`` with a PRODUCER span per
    call (``send <subject>``: ``messaging.system``, ``messaging.destination.name``,
    ``messaging.operation.type`` ``send``, ``messaging.message.id`` = event id; never
    event data), whose context travels with the events as ``ce-traceparent`` /
    ``ce-tracestate``; counts ``hexinfra.events.published``."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        system: str = "nats",
        telemetry: Telemetry | None = None,
    ) -> None:
        self._inner = publisher
        self._tel = telemetry or Telemetry(
            tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        self._system = system

    @property
    def wrapped(self) -> Publisher:
        return self._inner

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        destination = event.type if subject is None else subject
        attributes: dict[str, Any] = {
            "messaging.system": self._system,
            "messaging.destination.name": destination,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.message.id": event.id,
        }
        ack: PublishAck = await self._send(
            destination, attributes, 1, self._inner.publish, event, subject=subject
        )
        return ack

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        if not events:
            return await self._inner.publish_many(events, subject=subject)
        first = events[0]
        destination = (
            subject
            if subject is not None
            else (first.type if all(e.type == first.type for e in events) else "(multiple)")
        )
        attributes: dict[str, Any] = {
            "messaging.system": self._system,
            "messaging.destination.name": destination,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.batch.message_count": len(events),
        }
        if len(events) == 1:
            attributes["messaging.message.id"] = first.id
        acks: list[PublishAck] = await self._send(
            destination, attributes, len(events), self._inner.publish_many, events, subject=subject
        )
        return acks

    async def _send(
        self,
        destination: str,
        attributes: dict[str, Any],
        count: int,
        call: Any,
        what: Any,
        *,
        subject: str | None,
    ) -> Any:
        # A context stored with the events (the outbox relay sets OUTGOING to the one its
        # rows were written under) is the send span's parent: the request's trace goes on.
        stored = extract(OUTGOING.get())
        parent = (
            trace.set_span_in_context(trace.NonRecordingSpan(stored), otel_context.Context())
            if stored is not None
            else None
        )
        with self._tel.tracer.start_as_current_span(
            f"send {destination}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=[Link(stored)] if stored is not None else None,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            token = OUTGOING.set(inject())
            try:
                result = await call(what, subject=subject)
            except BaseException as exc:
                _failed(span, exc)
                raise
            finally:
                OUTGOING.reset(token)
        self._tel.published.add(
            count,
            {"messaging.system": self._system, "messaging.destination.name": destination},
        )
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"TracedPublisher({self._inner!r})"


def _cut_off() -> bool:
    """Whether this task is being cancelled (a handler returned from under it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _failed(span: trace.Span, exc: BaseException) -> None:
    error = type(exc).__qualname__
    span.set_attribute("error.type", error)
    # The type only: messages may carry what a handler put in them.
    span.set_status(Status(StatusCode.ERROR, error))


class TracedSubscriber:
    """The :class:`~ports.events.Subscriber` ``subscriber`` whose handlers run in a
    CONSUMER span (``process <subject>``) that continues the producer's trace: the
    context in ``ce-traceparent`` is the span's parent and also a link (ADR 0031);
    an event without one starts a new trace. Records ``hexinfra.events.handled``
    by outcome (``ack``, ``retry``, ``dead_letter``) as the subscription decided it
    (a run cut short by ``stop()`` is taken back and not counted),
    ``hexinfra.events.handler.duration`` (every run) and
    ``hexinfra.events.dead_letters`` by ``hexinfra.dead_letter.reason`` (every dead
    letter stored, an undecodable message's included)."""

    def __init__(
        self,
        subscriber: Subscriber,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        system: str = "nats",
        telemetry: Telemetry | None = None,
    ) -> None:
        self._inner = subscriber
        self._tel = telemetry or Telemetry(
            tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        self._system = system

    @property
    def wrapped(self) -> Subscriber:
        return self._inner

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        durable: str,
        max_deliver: int = DEFAULT_MAX_DELIVER,
        ack_wait: float = DEFAULT_ACK_WAIT,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        concurrency: int = 1,
        handler_timeout: float | None = None,
    ) -> Subscription:
        traced = _TracedHandler(
            self._tel,
            self._system,
            subject,
            handler,
            durable=durable,
            max_deliver=max_deliver,
            backoff=backoff,
        )
        return await self._inner.subscribe(
            subject,
            traced,
            durable=durable,
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            backoff=backoff,
            concurrency=concurrency,
            handler_timeout=handler_timeout,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"TracedSubscriber({self._inner!r})"


_OUTCOMES: Final = ("ack", "retry", "dead_letter")


class _TracedHandler:
    """The handler run in a CONSUMER span, timed, and the subscription's observer
    (``adapters._delivery_policy.DeliveryObserver``): ``hexinfra.events.handled`` and
    ``hexinfra.events.dead_letters`` count the verdicts the subscription reports, so
    they are what it did (a timeout, a ``Reject``, the last attempt, a run taken back
    by ``stop()``), never a guess. Under a subscriber that does not report (one that
    wraps handlers, or another implementation of the port), the wrapper judges each
    run itself with the same pure policy (``after_run``); a run ended by its task's
    own cancellation is then counted as taken back (a ``handler_timeout`` enforced by
    such a subscriber included)."""

    __slots__ = (
        "_attached",
        "_backoff",
        "_durable",
        "_handler",
        "_inner_observer",
        "_labels",
        "_max_deliver",
        "_outcome_labels",
        "_reason_labels",
        "_span_name",
        "_static",
        "_subject",
        "_tel",
        "_wildcard",
    )

    def __init__(
        self,
        tel: Telemetry,
        system: str,
        subject: str,
        handler: Handler,
        *,
        durable: str,
        max_deliver: int,
        backoff: Sequence[float],
    ) -> None:
        self._tel = tel
        self._handler = handler
        self._max_deliver = max_deliver
        self._backoff = tuple(backoff)
        self._subject = subject
        self._durable = durable
        self._wildcard = "*" in subject or ">" in subject
        self._span_name = f"process {subject}"
        self._labels: dict[str, Any] = {
            "messaging.system": system,
            "messaging.destination.name": subject,
            "messaging.consumer.group.name": durable,
        }
        self._outcome_labels = {o: {**self._labels, "hexinfra.outcome": o} for o in _OUTCOMES}
        self._reason_labels: dict[str, dict[str, Any]] = {}
        self._static: dict[str, Any] = {
            "messaging.system": system,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": durable,
        }
        if self._wildcard:
            self._static["messaging.destination.template"] = subject
        # A handler that is itself observed (another TracedSubscriber's, a user's
        # observer) still hears every verdict.
        self._inner_observer: DeliveryObserver | None = carried_observer(handler)
        self._attached = False

    # --- DeliveryObserver: what the subscription decided -----------------------------

    @property
    def delivery_observer(self) -> DeliveryObserver:
        return self

    def attached(self) -> None:
        self._attached = True
        if self._inner_observer is not None:
            self._inner_observer.attached()

    def ran(self, action: Literal["ack", "retry", "dead_letter"]) -> None:
        self._tel.handled.add(1, self._outcome_labels[action])
        if self._inner_observer is not None:
            self._inner_observer.ran(action)

    def dead_lettered(self, reason: str) -> None:
        labels = self._reason_labels.get(reason)
        if labels is None:
            labels = {**self._labels, "hexinfra.dead_letter.reason": reason}
            if len(self._reason_labels) < 16:  # reasons are a handful of constants
                self._reason_labels[reason] = labels
        self._tel.dead_letters.add(1, labels)
        if self._inner_observer is not None:
            self._inner_observer.dead_lettered(reason)

    # --- the run ---------------------------------------------------------------------

    async def __call__(self, event: Event) -> None:
        remote = extract(INCOMING.get())
        attempt = current_context().get("attempt")
        attributes: dict[str, Any] = {
            **self._static,
            "messaging.destination.name": event.type if self._wildcard else self._subject,
            "messaging.message.id": event.id,
        }
        if isinstance(attempt, int):
            attributes["hexinfra.attempt"] = attempt
        # The producer's context is the parent (one trace end to end) and a link (as
        # the messaging conventions ask); without one, a new trace: never the context
        # of whoever called subscribe().
        parent = (
            trace.set_span_in_context(trace.NonRecordingSpan(remote), otel_context.Context())
            if remote is not None
            else otel_context.Context()
        )
        links = [Link(remote)] if remote is not None else None
        tel = self._tel
        start = time.perf_counter()
        with tel.tracer.start_as_current_span(
            self._span_name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self._handler(event)
            except BaseException as exc:
                _failed(span, exc)
                if is_own_cancellation(exc):
                    # stop() (taken back) or a handler_timeout (a failed run): only
                    # the subscription knows which; its report is what counts.
                    tel.handler_duration.record(time.perf_counter() - start, self._labels)
                    raise
                verdict = after_run(
                    exc,
                    attempt=attempt if isinstance(attempt, int) else 0,
                    max_deliver=self._max_deliver,
                    backoff=self._backoff,
                )
                span.set_attribute("hexinfra.outcome", verdict.action)
                tel.handler_duration.record(time.perf_counter() - start, self._labels)
                if not self._attached:
                    notify_ran(self, verdict.action)
                    if verdict.action == "dead_letter":
                        notify_dead_lettered(self, verdict.reason)
                raise
            tel.handler_duration.record(time.perf_counter() - start, self._labels)
            if _cut_off():
                # It swallowed the cancellation of its handler_timeout (or stop()):
                # the subscription judges that run, not as an ack.
                span.set_attribute("error.type", "TimeoutError")
                span.set_status(Status(StatusCode.ERROR, "cut off"))
                return
            span.set_attribute("hexinfra.outcome", "ack")
            if not self._attached:
                notify_ran(self, "ack")  # an instrument's failure never fails the run
