"""InMemoryEventBus: Publisher and Subscriber in one object, in process, on a Clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from adapters import event_codec
from adapters._event_rules import (
    REASON_MAX_DELIVER,
    REASON_REJECTED,
    REASON_UNDECODABLE,
    NullLogger,
    backoff_delay,
    check_durable,
    check_publish_subject,
    check_subscribe_options,
    check_subscribe_subject,
    describe,
    subject_pattern,
)
from domain_errors import Conflict, ServiceUnavailable
from ports.clock import Clock, SystemClock
from ports.config import ConfigSource
from ports.context import bind_context, request_id
from ports.events import (
    DEFAULT_ACK_WAIT,
    DEFAULT_BACKOFF,
    DEFAULT_MAX_DELIVER,
    DeadLetter,
    Event,
    Handler,
    PublishAck,
    Reject,
)
from ports.logger import Logger

__all__ = ["InMemoryEventBus", "InMemorySubscription"]

_SETTLE_ROUNDS: Final = 4


class _Durable:
    """A consumer group: a cursor over the log, redeliveries, and its members."""

    def __init__(self, bus: InMemoryEventBus, name: str, subject: str) -> None:
        self.bus = bus
        self.name = name
        self.subject = subject
        self.pattern = subject_pattern(subject)
        self.cursor = 0
        self.redeliver: deque[int] = deque()
        self.attempts: dict[int, int] = {}
        self.delayed = 0
        self.inflight = 0
        self.has_work = asyncio.Event()
        self.members: list[InMemorySubscription] = []
        self._matches: dict[str, bool] = {}

    def matches(self, subject: str) -> bool:
        hit = self._matches.get(subject)
        if hit is None:
            hit = self._matches[subject] = self.pattern.match(subject) is not None
        return hit

    def take(self) -> int:
        """The index of the next message to deliver, or -1."""
        if self.redeliver:
            return self.redeliver.popleft()
        subjects = self.bus._subjects
        end = len(subjects)
        while self.cursor < end:
            index = self.cursor
            self.cursor += 1
            if self.matches(subjects[index]):
                return index
        return -1

    def has_deliverable(self) -> bool:
        if not self.members:
            return False
        if self.redeliver:
            return True
        return any(self.matches(s) for s in self.bus._subjects[self.cursor :])

    def pending(self) -> int:
        unread = sum(1 for s in self.bus._subjects[self.cursor :] if self.matches(s))
        return unread + len(self.redeliver) + self.delayed + self.inflight


class InMemorySubscription:
    """A running subscription on an :class:`InMemoryEventBus` (the Subscription port)."""

    def __init__(
        self,
        bus: InMemoryEventBus,
        durable: _Durable,
        handler: Handler,
        *,
        max_deliver: int,
        ack_wait: float,
        backoff: tuple[float, ...],
        concurrency: int,
    ) -> None:
        self._bus = bus
        self._durable = durable
        self._handler = handler
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._backoff = backoff
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None
        self._workers = [
            asyncio.get_running_loop().create_task(self._work(), name=f"events:{durable.name}")
            for _ in range(concurrency)
        ]

    @property
    def subject(self) -> str:
        """The subject filter this subscription consumes."""
        return self._durable.subject

    @property
    def durable(self) -> str:
        """The durable (consumer group) this subscription belongs to."""
        return self._durable.name

    @property
    def running(self) -> bool:
        """Whether :meth:`stop` has not been called."""
        return not self._stopping

    async def stop(self, timeout: float = 10.0) -> None:
        """Take no new events; let in-flight handlers finish (up to ``timeout`` real
        seconds), then cancel the rest, whose events go back to the durable at once.
        Idempotent; concurrent callers all wait for the same stop."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop(timeout))
        await asyncio.shield(self._stopped)

    async def _stop(self, timeout: float) -> None:
        self._stopping = True
        self._durable.has_work.set()
        _, late = await asyncio.wait(self._workers, timeout=max(0.0, timeout))
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(ValueError):
            self._durable.members.remove(self)
        self._durable.has_work.set()

    async def _work(self) -> None:
        bus = self._bus
        durable = self._durable
        attempts = durable.attempts
        max_deliver = self._max_deliver
        handler = self._handler
        events, rids = bus._events, bus._rids
        while not self._stopping:
            index = durable.take()
            if index < 0:
                durable.has_work.clear()
                await durable.has_work.wait()
                continue
            attempt = attempts.get(index, 0) + 1
            attempts[index] = attempt
            durable.inflight += 1
            bus._progress += 1
            try:
                event = events[index]
                rid = rids[index]
                if event is None or attempt > max_deliver:
                    event, rid = self._prepare(index, attempt)
                    if event is None:
                        continue
                try:
                    with bind_context(
                        request_id=rid,
                        event_id=event.id,
                        event_type=event.type,
                        organization_id=event.organization_id,
                        attempt=attempt,
                    ):
                        await handler(event)
                except Reject as exc:
                    self._dead(index, event, REASON_REJECTED, attempt, exc.reason)
                except Exception as exc:
                    self._failed(index, event, attempt, exc)
                except BaseException:
                    # Killed mid-event (stop timed out, or the process is going down):
                    # the event goes back to the durable at once.
                    durable.redeliver.appendleft(index)
                    durable.has_work.set()
                    raise
                else:
                    del attempts[index]
            finally:
                durable.inflight -= 1
                bus._progress += 1

    def _prepare(self, index: int, attempt: int) -> tuple[Event | None, str | None]:
        """Decode a raw message and apply the delivery limit: the event and request id
        to handle, or ``(None, None)`` when it was dead-lettered instead."""
        bus = self._bus
        event, rid = bus._events[index], bus._rids[index]
        if event is None:
            payload, headers, stored_at = bus._raw[index]
            try:
                decoded = event_codec.decode_message(payload, headers, default_time=stored_at)
            except event_codec.EventDecodeError as exc:
                self._undecodable(index, attempt, exc.message)
                return None, None
            event, rid = decoded.event, decoded.request_id
        if attempt > self._max_deliver:
            self._dead(index, event, REASON_MAX_DELIVER, attempt, "delivery limit reached")
            return None, None
        return event, rid

    def _undecodable(self, index: int, attempt: int, problem: str) -> None:
        self._bus._logger.error(
            "undecodable event dead-lettered",
            subject=self._bus._subjects[index],
            durable=self._durable.name,
            reason=problem,
        )
        self._dead(index, None, REASON_UNDECODABLE, attempt, problem)

    def _failed(self, index: int, event: Event, attempt: int, exc: Exception) -> None:
        durable = self._durable
        logger = self._bus._logger
        if attempt >= self._max_deliver:
            logger.error(
                "event handler failed for the last time; dead-lettered",
                exc=exc,
                event_id=event.id,
                durable=durable.name,
                attempt=attempt,
            )
            self._dead(index, event, REASON_MAX_DELIVER, attempt, describe(exc))
        else:
            logger.warning(
                "event handler failed; will retry",
                event_id=event.id,
                durable=durable.name,
                attempt=attempt,
                failure=describe(exc),
            )
            self._bus._redeliver_later(durable, index, backoff_delay(self._backoff, attempt))

    def _dead(self, index: int, event: Event | None, reason: str, attempt: int, error: str) -> None:
        bus = self._bus
        self._durable.attempts.pop(index, None)
        raw = bus._raw.get(index)
        if raw is not None:
            payload, headers = raw[0], dict(raw[1])
        else:
            assert event is not None
            payload, headers = event_codec.encode(event, request_id=bus._rids[index])
        bus.dead_letters.append(
            DeadLetter(
                subject=bus._subjects[index],
                durable=self._durable.name,
                reason=reason,
                attempts=attempt,
                event=event,
                payload=payload,
                headers=headers,
                error=error,
            )
        )


class InMemoryEventBus:
    """Publisher and Subscriber in one object, with the semantics of the NATS adapter.

    - Subjects as on NATS: ``*`` matches one token, ``>`` one or more at the end.
    - A publish stores the event in an in-process log and returns its
      :class:`PublishAck` (``stream`` is ``EVENTS_STREAM``, sequences from 1); the
      same ``event.id`` inside ``duplicate_window`` seconds is acked
      ``duplicate=True`` with the first copy's sequence and stored once.
    - Durables: members share the work, different durables each see every event,
      a new durable starts from the first stored event, a durable outlives its
      members (it resumes where it stopped).
    - Handler returns -> ack; raises -> redelivered after ``backoff[n]`` seconds of
      the injected clock, at most ``max_deliver`` deliveries; raises ``Reject``,
      or the payload does not decode -> a :class:`DeadLetter` in
      :attr:`dead_letters` at once.
    - A handler is never redelivered under itself: ``ack_wait`` is accepted and
      validated, and a running handler counts as in progress however long it runs.

    Deterministic: with a :class:`testing.FakeClock`, ``await run_until_idle()``
    delivers everything due, in a reproducible order, and ``clock.advance(s)``
    makes delayed redeliveries due. With the real clock (the default) it is a
    usable in-process broker. Handlers receive the published :class:`Event`
    object itself (no copy): treat it as immutable.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        logger: Logger | None = None,
        stream: str = "EVENTS",
        duplicate_window: float = 120.0,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._logger: Logger = logger if logger is not None else NullLogger()
        self._stream = stream
        self._window = float(duplicate_window)
        # The log, one entry per stored message, as parallel lists (few objects for
        # the garbage collector to walk); raw messages keep their bytes in _raw.
        self._subjects: list[str] = []
        self._events: list[Event | None] = []
        self._rids: list[str | None] = []
        self._raw: dict[int, tuple[bytes, dict[str, str], datetime]] = {}
        self._ids: dict[str, tuple[int, float]] = {}
        self._id_expiry: deque[tuple[float, str]] = deque()
        self._durables: dict[str, _Durable] = {}
        self._subscriptions: list[InMemorySubscription] = []
        self._timers: set[asyncio.Task[None]] = set()
        self._progress = 0
        self._closed = False
        self.published: list[Event] = []
        """Every event stored, in order (duplicates and raw messages excluded)."""
        self.dead_letters: list[DeadLetter] = []
        """Every dead letter, in the order they happened."""

    @classmethod
    def from_config(
        cls, config: ConfigSource, *, logger: Logger | None = None, clock: Clock | None = None
    ) -> InMemoryEventBus:
        """Build from ``EVENTS_STREAM`` (EVENTS) and ``EVENTS_DUPLICATE_WINDOW_S`` (120)."""
        return cls(
            clock=clock,
            logger=logger,
            stream=config.get_str("EVENTS_STREAM", "EVENTS"),
            duplicate_window=config.get_float("EVENTS_DUPLICATE_WINDOW_S", 120.0),
        )

    # -- lifecycle ------------------------------------------------------------------

    async def connect(self) -> None:
        """Nothing to connect; present so that the bus drops in where NATS was."""

    async def health_check(self) -> None:
        """``ServiceUnavailable`` once closed; ``None`` otherwise."""
        if self._closed:
            raise ServiceUnavailable("event bus is closed")

    async def close(self, timeout: float = 10.0) -> None:
        """Stop every subscription (letting handlers finish) and cancel pending
        redelivery timers. Idempotent; publishing afterwards raises ServiceUnavailable."""
        self._closed = True
        await asyncio.gather(*(s.stop(timeout) for s in list(self._subscriptions)))
        for timer in list(self._timers):
            timer.cancel()
        if self._timers:
            await asyncio.gather(*self._timers, return_exceptions=True)

    # -- Publisher --------------------------------------------------------------------

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        """Store ``event`` (subject defaults to ``event.type``) and return its ack."""
        return self._store(event, subject, request_id())

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        """Publish each event in order; the acks in the same order."""
        rid = request_id()
        store = self._store
        return [store(event, subject, rid) for event in events]

    async def publish_raw(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> PublishAck:
        """Store a message as it would arrive from the wire (bytes and headers), e.g.
        a CloudEvent from another publisher or a poison payload. It is decoded at
        delivery; the ``Nats-Msg-Id`` header, when present, is its dedupe key."""
        subject = check_publish_subject(subject)
        msg_id = None
        for key, value in (headers or {}).items():
            if key.lower() == event_codec.H_MSG_ID.lower():
                msg_id = value
        ack = self._append(subject, None, None, msg_id)
        if not ack.duplicate:
            self._raw[ack.sequence - 1] = (bytes(payload), dict(headers or {}), self._clock.now())
        return ack

    def _store(self, event: Event, subject: str | None, rid: str | None) -> PublishAck:
        if not isinstance(event, Event):
            raise TypeError("publish takes an Event")
        subject = check_publish_subject(event.type if subject is None else subject)
        return self._append(subject, event, rid, event.id)

    def _append(
        self, subject: str, event: Event | None, rid: str | None, msg_id: str | None
    ) -> PublishAck:
        if self._closed:
            raise ServiceUnavailable("event bus is closed")
        subjects = self._subjects
        if msg_id is not None and self._window > 0:
            now = self._clock.monotonic()
            expiry = self._id_expiry
            while expiry and expiry[0][0] <= now:
                # An id is re-registered only after its entry expired and was
                # swept here, so the map entry for ``old`` is always this one.
                del self._ids[expiry.popleft()[1]]
            seen = self._ids.get(msg_id)
            if seen is not None:
                return PublishAck(self._stream, seen[0], True)
            until = now + self._window
            self._ids[msg_id] = (len(subjects) + 1, until)
            expiry.append((until, msg_id))
        subjects.append(subject)
        self._events.append(event)
        self._rids.append(rid)
        seq = len(subjects)
        if event is not None:
            self.published.append(event)
        for durable in self._durables.values():
            if durable.members and durable.matches(subject):
                durable.has_work.set()
        self._progress += 1
        return PublishAck(self._stream, seq, False)

    # -- Subscriber -------------------------------------------------------------------

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
    ) -> InMemorySubscription:
        """Start delivering ``subject`` to ``handler`` as a member of ``durable``.

        ``Conflict`` if ``durable`` already consumes a different subject;
        ``BadRequest`` for an invalid subject, durable or option.
        """
        if self._closed:
            raise ServiceUnavailable("event bus is closed")
        check_subscribe_subject(subject)
        check_durable(durable)
        delays = check_subscribe_options(
            max_deliver=max_deliver, ack_wait=ack_wait, backoff=backoff, concurrency=concurrency
        )
        group = self._durables.get(durable)
        if group is None:
            group = self._durables[durable] = _Durable(self, durable, subject)
        elif group.subject != subject:
            raise Conflict(
                f"durable {durable!r} already consumes {group.subject!r}, not {subject!r}",
                details={"durable": durable},
            )
        subscription = InMemorySubscription(
            self,
            group,
            handler,
            max_deliver=max_deliver,
            ack_wait=float(ack_wait),
            backoff=delays,
            concurrency=concurrency,
        )
        group.members.append(subscription)
        self._subscriptions.append(subscription)
        group.has_work.set()
        return subscription

    def _redeliver_later(self, durable: _Durable, index: int, delay: float) -> None:
        if delay <= 0:
            durable.redeliver.append(index)
            durable.has_work.set()
            return
        durable.delayed += 1
        timer = asyncio.get_running_loop().create_task(self._timer(durable, index, delay))
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _timer(self, durable: _Durable, index: int, delay: float) -> None:
        try:
            await self._clock.sleep(delay)
        finally:
            durable.delayed -= 1
        durable.redeliver.append(index)
        durable.has_work.set()
        self._progress += 1

    # -- inspection and determinism -------------------------------------------------

    def pending(self, durable: str) -> int:
        """Events ``durable`` has not finished with: not yet delivered, waiting for
        a redelivery, or in a handler now. ``0`` for a durable never subscribed."""
        group = self._durables.get(durable)
        return 0 if group is None else group.pending()

    @property
    def durables(self) -> list[str]:
        """The names of every durable created so far."""
        return list(self._durables)

    async def run_until_idle(self, *, settle: float = 0.05) -> None:
        """Deliver everything due now, then return.

        Returns once no event can be delivered and no handler is running, or
        when the running handlers have made no progress for ``settle`` real
        seconds (they wait on the clock or on something outside the bus).
        Delayed redeliveries wait for the clock: ``clock.advance(s)`` then call
        this again.
        """
        quiet_since: float | None = None
        while True:
            before = self._progress
            for _ in range(_SETTLE_ROUNDS):
                await asyncio.sleep(0)
            if self._progress != before:
                quiet_since = None
                continue
            if not any(d.inflight or d.has_deliverable() for d in self._durables.values()):
                return
            now = time.monotonic()
            if quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= settle:
                return
            await asyncio.sleep(0.001)
