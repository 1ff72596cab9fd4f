"""FlakyPublisher and FlakySubscriber: inject failures or latency into any events port."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import attrs

from adapters._delivery_policy import carried_observer
from domain_errors import ServiceUnavailable
from ports.clock import Clock, SystemClock
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

__all__ = ["FlakyPublisher", "FlakySubscriber", "PublishCall", "PUBLISHER_METHODS"]

PUBLISHER_METHODS: Final = frozenset({"publish", "publish_many"})

ErrorSpec = type[BaseException] | BaseException | Callable[[str], BaseException]


def _build(spec: ErrorSpec, where: str) -> BaseException:
    if isinstance(spec, BaseException):
        return copy.copy(spec)
    return spec(f"injected failure in {where}")


@attrs.frozen
class PublishCall:
    """One call that reached a :class:`FlakyPublisher`.

    ``injected`` is the error raised instead of publishing, or ``None`` when the
    call went through to the wrapped publisher.
    """

    method: str
    events: tuple[Event, ...]
    subject: str | None
    injected: BaseException | None = attrs.field(default=None, eq=False)


class _Faults:
    def __init__(self, clock: Clock | None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.failures: list[tuple[ErrorSpec, frozenset[str] | None]] = []
        self.latency = 0.0

    def add(self, count: int, error: ErrorSpec, methods: Iterable[str] | None) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        only = frozenset(methods) if methods is not None else None
        self.failures.extend([(error, only)] * count)

    async def before(self, method: str) -> BaseException | None:
        if self.latency > 0:
            await self.clock.sleep(self.latency)
        for index, (spec, only) in enumerate(self.failures):
            if only is None or method in only:
                del self.failures[index]
                return _build(spec, method)
        return None


class FlakyPublisher:
    """A :class:`~ports.events.Publisher` that fails or slows down on demand.

    ``fail_next(n, error=..., methods=...)`` makes the next ``n`` calls (optionally
    only ``publish`` or ``publish_many``) raise ``error`` instead of reaching the
    wrapped publisher: nothing is published by a failed call. ``error`` is an
    exception class (built with a message naming the method), an instance (copied)
    or a callable taking the method name; the default is ``ServiceUnavailable``, what
    the real adapter raises when the broker does not ack. ``set_latency(s)`` makes
    every call first sleep ``s`` seconds on the injected clock. ``calls`` records
    every call in order.
    """

    def __init__(self, inner: Publisher, *, clock: Clock | None = None) -> None:
        self.inner = inner
        self.calls: list[PublishCall] = []
        self._faults = _Faults(clock)

    def fail_next(
        self,
        count: int = 1,
        *,
        error: ErrorSpec = ServiceUnavailable,
        methods: Iterable[str] | None = None,
    ) -> None:
        """Fail the next ``count`` calls (of ``methods``, default any) with ``error``."""
        if methods is not None and not set(methods) <= PUBLISHER_METHODS:
            raise ValueError(f"methods must be among {sorted(PUBLISHER_METHODS)}")
        self._faults.add(count, error, methods)

    def set_latency(self, seconds: float) -> None:
        """Delay every later call by ``seconds`` on the clock (0 to stop)."""
        self._faults.latency = max(0.0, seconds)

    @property
    def published(self) -> list[Event]:
        """Events that went through to the wrapped publisher, in order."""
        return [e for c in self.calls if c.injected is None for e in c.events]

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        error = await self._faults.before("publish")
        self.calls.append(PublishCall("publish", (event,), subject, error))
        if error is not None:
            raise error
        return await self.inner.publish(event, subject=subject)

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        error = await self._faults.before("publish_many")
        self.calls.append(PublishCall("publish_many", tuple(events), subject, error))
        if error is not None:
            raise error
        return await self.inner.publish_many(events, subject=subject)


class FlakySubscriber:
    """A :class:`~ports.events.Subscriber` whose handlers fail or slow down on demand.

    Wraps every handler it subscribes: ``fail_next(n, error=...)`` makes the next
    ``n`` deliveries (across its subscriptions) raise ``error`` before the real
    handler runs, so the wrapped adapter naks and redelivers them as it would a
    crashing handler; the default error is ``RuntimeError``. ``set_latency(s)``
    delays each delivery on the clock. ``deliveries`` counts deliveries seen, by
    event id.
    """

    def __init__(self, inner: Subscriber, *, clock: Clock | None = None) -> None:
        self.inner = inner
        self.deliveries: dict[str, int] = {}
        self._faults = _Faults(clock)

    def fail_next(self, count: int = 1, *, error: ErrorSpec = RuntimeError) -> None:
        """Fail the next ``count`` deliveries with ``error`` (before the handler runs)."""
        self._faults.add(count, error, None)

    def set_latency(self, seconds: float) -> None:
        """Delay every later delivery by ``seconds`` on the clock (0 to stop)."""
        self._faults.latency = max(0.0, seconds)

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
        async def flaky(event: Event) -> None:
            self.deliveries[event.id] = self.deliveries.get(event.id, 0) + 1
            error = await self._faults.before("handler")
            if error is not None:
                raise error
            await handler(event)

        observer = carried_observer(handler)
        if observer is not None:
            # A traced handler's observer still hears the subscription's verdicts,
            # the injected failures included (adapters._delivery_policy).
            flaky.delivery_observer = observer  # type: ignore[attr-defined]
        return await self.inner.subscribe(
            subject,
            flaky,
            durable=durable,
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            backoff=backoff,
            concurrency=concurrency,
            handler_timeout=handler_timeout,
        )
