"""TracedPublisher and TracedSubscriber: messaging spans, trace context and metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

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
    Reject,
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
    by outcome (``ack``, ``retry``, ``dead_letter``), ``hexinfra.events.handler.
    duration`` and ``hexinfra.events.dead_letters``."""

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
        traced = _traced_handler(
            self._tel, self._system, subject, handler, durable=durable, max_deliver=max_deliver
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


def _traced_handler(
    tel: Telemetry,
    system: str,
    subject: str,
    handler: Handler,
    *,
    durable: str,
    max_deliver: int,
) -> Handler:
    tracer = tel.tracer
    wildcard = "*" in subject or ">" in subject
    labels = {
        "messaging.system": system,
        "messaging.destination.name": subject,
        "messaging.consumer.group.name": durable,
    }
    span_name = f"process {subject}"

    async def traced(event: Event) -> None:
        remote = extract(INCOMING.get())
        attempt = current_context().get("attempt")
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.destination.name": event.type if wildcard else subject,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": durable,
            "messaging.message.id": event.id,
        }
        if wildcard:
            attributes["messaging.destination.template"] = subject
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
        start = time.perf_counter()
        outcome = "ack"
        with tracer.start_as_current_span(
            span_name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await handler(event)
            except BaseException as exc:
                last = isinstance(attempt, int) and attempt >= max_deliver
                outcome = "dead_letter" if isinstance(exc, Reject) or last else "retry"
                _failed(span, exc)
                raise
            finally:
                span.set_attribute("hexinfra.outcome", outcome)
                tel.handler_duration.record(time.perf_counter() - start, labels)
                tel.handled.add(1, {**labels, "hexinfra.outcome": outcome})
                if outcome == "dead_letter":
                    tel.dead_letters.add(1, labels)

    return traced
