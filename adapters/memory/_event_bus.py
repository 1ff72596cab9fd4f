"""InMemoryEventBus: Publisher and Subscriber in one object, in process, on a Clock."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import attrs
import orjson

from adapters import event_codec
from adapters._config_base import DAY, NumberRule, check_number
from adapters._delivery_policy import (
    after_run,
    before_run,
    is_own_cancellation,
    notify_dead_lettered,
    notify_ran,
    observer_of,
    undecodable,
)
from adapters._event_rules import (
    DEFAULT_MAX_PAYLOAD,
    REASON_MAX_DELIVER,
    NullLogger,
    check_durable,
    check_publish_subject,
    check_subscribe_options,
    check_subscribe_subject,
    check_wire_size,
    describe,
    subject_pattern,
    wire_size,
)
from adapters._trace_carrier import INCOMING, OUTGOING, Carrier, incoming
from domain_errors import BadRequest, Conflict, ServiceUnavailable
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
)
from ports.logger import Logger

_WINDOW: Final = NumberRule(0, 7 * DAY)
_MAX_PAYLOAD: Final = NumberRule(1, 64 * 1024 * 1024, integer=True)

__all__ = ["InMemoryEventBus", "InMemorySubscription"]

_SETTLE_ROUNDS: Final = 4
_YIELD_EVERY: Final = 16
"""Deliveries a worker makes before it yields to the event loop, backlog or not."""

# The wire size of our own encoding is bounded by the body plus a fixed header block
# plus at most 12 bytes per character of the header fields (4 UTF-8 bytes, each
# percent-encoded). Far below the limit, that bound spares publish the full encoding;
# near it, the codec's exact encoding decides.
_HEADER_NAMES: Final = (
    event_codec.H_SPECVERSION,
    event_codec.H_ID,
    event_codec.H_TYPE,
    event_codec.H_SOURCE,
    event_codec.H_TIME,
    event_codec.H_ORGANIZATION_ID,
    event_codec.H_CONTENT_TYPE,
    event_codec.H_MSG_ID,
    event_codec.H_REQUEST_ID,
)
_FIXED_HEADERS: Final = (
    wire_size(b"", dict.fromkeys(_HEADER_NAMES, "x"))
    - len(_HEADER_NAMES)
    + len(event_codec.SPECVERSION)
    + len(event_codec.CONTENT_TYPE)
    + len("0000-00-00T00:00:00.000000+00:00")
)
_BYTES_PER_CHAR: Final = 12

_dumps = orjson.dumps
_loads = orjson.loads
_incoming_now = INCOMING.get
_new = object.__new__
_FIELDS: Final = ("type", "source", "organization_id", "data", "id", "timestamp")
_TRUSTED: Final = tuple(f.name for f in attrs.fields(Event)) == _FIELDS
# Event's slots, written directly: a frozen class refuses setattr, and this is the
# cheapest way to build the per-delivery copy.
_SLOTS: Final = tuple(getattr(Event, name).__set__ for name in _FIELDS) if _TRUSTED else ()


def _json_copy(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {k: _json_copy(v) for k, v in value.items()}
    if kind is list:
        return [_json_copy(v) for v in value]
    return value


def _with_data(event: Event, data: dict[str, Any]) -> Event:
    """``event`` with ``data`` in place of its own, without re-checking the fields of
    an event that was checked when built (``data`` is a copy of its valid data)."""
    if not _SLOTS:
        return attrs.evolve(event, data=data)
    set_type, set_source, set_organization_id, set_data, set_id, set_timestamp = _SLOTS
    copy = _new(Event)
    set_type(copy, event.type)
    set_source(copy, event.source)
    set_organization_id(copy, event.organization_id)
    set_data(copy, data)
    set_id(copy, event.id)
    set_timestamp(copy, event.timestamp)
    return copy


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
        """The index of the next message to deliver (a redelivery first), or -1."""
        if self.redeliver:
            return self.redeliver.popleft()
        subjects = self.bus._subjects
        end = len(subjects)
        cursor = self.cursor
        index = -1
        while cursor < end:
            cursor += 1
            if self.matches(subjects[cursor - 1]):
                index = cursor - 1
                break
        self.cursor = cursor
        return index

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
        handler_timeout: float | None,
    ) -> None:
        self._bus = bus
        self._durable = durable
        self._handler = handler
        # TracedSubscriber's handler carries an observer of the verdicts (ADR 0031).
        self._observer = observer_of(handler)
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._backoff = backoff
        self._handler_timeout = handler_timeout
        self._stopping = False
        self._broken = False
        self._stopped: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        # A fresh context per worker: the handler's context comes from the event
        # alone, never from the task that called subscribe.
        self._workers = [
            loop.create_task(
                self._work(), name=f"events:{durable.name}", context=contextvars.Context()
            )
            for _ in range(concurrency)
        ]
        for worker in self._workers:
            worker.add_done_callback(self._worker_ended)

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
        """True while it delivers: false after :meth:`stop`, or once a worker ended
        unexpectedly (logged at error)."""
        return not self._stopping and not self._broken

    async def stop(self, timeout: float = 10.0) -> None:
        """Take no new events; let in-flight handlers finish (up to ``timeout`` real
        seconds), then cancel the rest, whose events go back to the durable at once.
        A handler cancelled here uses up no attempt (as after a crash): its event is
        delivered again with the same attempt number. Idempotent; concurrent callers
        all wait for the same stop."""
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

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        self._broken = True
        error = None if task.cancelled() else task.exception()
        _log(
            self._bus._logger.error,
            "event worker ended unexpectedly; the subscription cannot go on",
            error,
            durable=self._durable.name,
            subject=self._durable.subject,
        )

    async def _work(self) -> None:  # noqa: PLR0912, PLR0915 - one loop, a branch per outcome
        # Take the next index (a redelivery first, else the next matching subject in
        # the log), copy the event, run the handler in the event's own context.
        bus = self._bus
        durable = self._durable
        attempts = durable.attempts
        redeliver = durable.redeliver
        events = bus._events
        rids = bus._rids
        bodies = bus._bodies
        traces = bus._traces
        handler = self._handler
        timeout = self._handler_timeout
        max_deliver = self._max_deliver
        since_yield = 0
        while not self._stopping:
            index = durable.take()
            if index < 0:
                durable.has_work.clear()
                await durable.has_work.wait()
                since_yield = 0
                continue
            attempt = attempts.get(index, 0) + 1 if attempts else 1
            durable.inflight += 1
            bus._progress += 1
            try:
                stored = events[index]
                if stored is None:
                    prepared = self._prepare_raw(index, attempt)
                    if prepared is None:
                        continue
                    stored, rid = prepared
                    event = stored  # decoded afresh for this delivery
                else:
                    rid = rids[index]
                    body = bodies[index]
                    data = _json_copy(stored.data) if body is None else _loads(body)
                    event = _with_data(stored, data)
                    verdict = before_run(attempt, max_deliver)
                    if verdict is not None:
                        self._dead(index, stored, verdict.reason, attempt - 1, verdict.error)
                        continue
                failure: BaseException | None = None
                timed_out = False
                # The handler's context: what the event carries, and the attempt.
                if rid is None:
                    context = bind_context(
                        event_id=event.id,
                        event_type=event.type,
                        organization_id=event.organization_id,
                        attempt=attempt,
                    )
                else:
                    context = bind_context(
                        request_id=rid,
                        event_id=event.id,
                        event_type=event.type,
                        organization_id=event.organization_id,
                        attempt=attempt,
                    )
                with context:
                    # incoming(carrier), skipped when it would change nothing: no
                    # carrier, and none set in this worker's context.
                    carrier = traces.get(index) if traces else None
                    trace = None
                    if carrier is not None or _incoming_now() is not None:
                        trace = incoming(carrier)
                        trace.__enter__()
                    try:
                        if timeout is None:
                            await handler(event)
                        else:
                            failure, timed_out = await self._run_limited(event, timeout)
                    except BaseException as exc:
                        if is_own_cancellation(exc):
                            raise
                        failure = exc
                    finally:
                        if trace is not None:
                            trace.__exit__(None, None, None)
                if failure is not None:
                    with bind_context(request_id=rid):  # retry / dead-letter lines too
                        self._failed(index, stored, attempt, failure, timed_out)
                elif attempt > 1 or self._observer is not None:
                    self._succeeded(index, attempt)
            except BaseException:
                # Cancelled mid-event (stop timed out, or the loop is going down): the
                # event goes back to the durable at once, and, as after a crash, the
                # run uses up no attempt (only failures are recorded).
                redeliver.appendleft(index)
                durable.has_work.set()
                raise
            finally:
                durable.inflight -= 1
                bus._progress += 1
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                # A ready backlog never starves the other tasks of the loop.
                since_yield = 0
                await asyncio.sleep(0)

    def _succeeded(self, index: int, attempt: int) -> None:
        """Handler run ``attempt`` returned: the event is acked."""
        notify_ran(self._observer, "ack")
        if attempt > 1:
            del self._durable.attempts[index]

    def _prepare_raw(self, index: int, attempt: int) -> tuple[Event, str | None] | None:
        """A raw message decoded afresh for this delivery and its request id; or
        ``None`` when it was dead-lettered instead of run."""
        bus = self._bus
        decoded = self._decode(index, attempt)
        if decoded is None:
            return None
        event, rid = decoded.event, decoded.request_id
        if decoded.trace is not None:
            bus._traces[index] = decoded.trace
        verdict = before_run(attempt, self._max_deliver)
        if verdict is not None:
            self._dead(index, event, verdict.reason, attempt - 1, verdict.error)
            return None
        return event, rid

    async def _run_limited(self, event: Event, timeout: float) -> tuple[BaseException | None, bool]:
        """Run the handler against ``timeout`` seconds of the bus clock (so that a
        FakeClock decides, deterministically): its failure, and whether it timed out."""
        loop = asyncio.get_running_loop()
        run = loop.create_task(_guarded(self._handler, event))
        timer = loop.create_task(self._bus._clock.sleep(timeout))
        try:
            await asyncio.wait((run, timer), return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                run.cancel()
                await asyncio.wait((run,))
                return TimeoutError(f"handler ran longer than {timeout} s"), True
            return run.result(), False
        except BaseException:
            run.cancel()
            timer.cancel()
            await asyncio.wait((run, timer))
            raise
        finally:
            timer.cancel()

    def _decode(self, index: int, attempt: int) -> event_codec.Decoded | None:
        """A raw message decoded, or ``None`` when it was dead-lettered instead."""
        bus = self._bus
        payload, headers, stored_at = bus._raw[index]
        try:
            return event_codec.decode_message(payload, headers, default_time=stored_at)
        except event_codec.EventDecodeError as exc:
            verdict = undecodable(exc.message)
            _log(
                bus._logger.error,
                "undecodable event dead-lettered",
                None,
                subject=bus._subjects[index],
                durable=self._durable.name,
                reason=verdict.error,
            )
            self._dead(index, None, verdict.reason, attempt, verdict.error)
            return None

    def _failed(
        self, index: int, event: Event, attempt: int, failure: BaseException, timed_out: bool
    ) -> None:
        durable = self._durable
        logger = self._bus._logger
        verdict = after_run(
            failure,
            attempt=attempt,
            max_deliver=self._max_deliver,
            backoff=self._backoff,
            timed_out=timed_out,
        )
        notify_ran(self._observer, verdict.action)
        if verdict.action == "retry":
            durable.attempts[index] = attempt
            _log(
                logger.warning,
                "event handler failed; will retry",
                None,
                event_id=event.id,
                durable=durable.name,
                attempt=attempt,
                failure=verdict.error,
            )
            self._bus._redeliver_later(durable, index, verdict.delay)
            return
        if verdict.reason == REASON_MAX_DELIVER:
            _log(
                logger.error,
                "event handler failed for the last time; dead-lettered",
                failure,
                event_id=event.id,
                durable=durable.name,
                attempt=attempt,
                failure=verdict.error,
            )
        else:
            _log(
                logger.info,
                "event rejected by its handler; dead-lettered",
                None,
                event_id=event.id,
                durable=durable.name,
                attempt=attempt,
                failure=verdict.error,
            )
        self._dead(index, event, verdict.reason, attempt, verdict.error)

    def _dead(
        self, index: int, event: Event | None, reason: str, attempts: int, error: str
    ) -> None:
        bus = self._bus
        self._durable.attempts.pop(index, None)
        raw = bus._raw.get(index)
        if raw is not None:
            payload, headers = raw[0], dict(raw[1])
        else:
            assert event is not None
            payload, headers = event_codec.encode(
                event, request_id=bus._rids[index], trace=bus._traces.get(index)
            )
        bus.dead_letters.append(
            DeadLetter(
                subject=bus._subjects[index],
                durable=self._durable.name,
                reason=reason,
                attempts=attempts,
                event=event,
                payload=payload,
                headers=headers,
                error=error,
            )
        )
        notify_dead_lettered(self._observer, reason)


async def _guarded(handler: Handler, event: Event) -> BaseException | None:
    """Run ``handler``; what it raised (its own cancellation included), or ``None``.
    Only the cancellation of this task (the timeout) propagates."""
    try:
        await handler(event)
    except BaseException as exc:
        if is_own_cancellation(exc):
            raise
        return exc
    return None


def _log(method: Any, message: str, exc: BaseException | None, **tags: Any) -> None:
    """Log, never raising: an exception the logger cannot render (its ``str()``
    raises) is logged by its description instead."""
    try:
        if exc is None:
            method(message, **tags)
        else:
            method(message, exc=exc, **tags)
    except Exception:
        if exc is not None:
            tags.setdefault("failure", describe(exc))
        with contextlib.suppress(Exception):
            method(message, **tags)


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
    - Handler returns -> ack; raises (anything, a ``CancelledError`` of its own
      included) -> redelivered after ``backoff[n]`` seconds of the injected clock,
      at most ``max_deliver`` handler runs; raises ``Reject``, or the payload does
      not decode -> a :class:`DeadLetter` in :attr:`dead_letters` at once. Every
      decision is :mod:`adapters._delivery_policy`'s, as on NATS.
    - A handler is never redelivered under itself: ``ack_wait`` is accepted and
      validated, and a running handler counts as in progress however long it runs.
      ``handler_timeout`` is measured on the injected clock.
    - Each delivery gets its own copy of ``data``; the handler's context holds only
      what the event carries (and the attempt); workers yield to the event loop
      between deliveries, so a backlog never starves other tasks.
    - An event whose wire form (CloudEvents headers and JSON body) exceeds
      ``max_payload`` bytes is refused with ``BadRequest``, as NATS refuses it;
      ``publish_many`` checks every event before storing any.

    Deterministic: with a :class:`testing.FakeClock`, ``await run_until_idle()``
    delivers everything due, in a reproducible order, and ``clock.advance(s)``
    makes delayed redeliveries due. With the real clock (the default) it is a
    usable in-process broker.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        logger: Logger | None = None,
        stream: str = "EVENTS",
        duplicate_window: float = 120.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if not isinstance(max_payload, int) or max_payload < 1:
            raise BadRequest(
                "max_payload must be an integer >= 1", details={"field": "max_payload"}
            )
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._logger: Logger = logger if logger is not None else NullLogger()
        self._stream = stream
        self._window = float(duplicate_window)
        self._max_payload = max_payload
        # The log, one entry per stored message, as parallel lists (few objects for
        # the garbage collector to walk); raw messages keep their bytes in _raw.
        self._subjects: list[str] = []
        self._events: list[Event | None] = []
        self._rids: list[str | None] = []
        # Trace context published with an event (ADR 0031), by index; only traced ones.
        self._traces: dict[int, Carrier] = {}
        # The JSON body of each stored event (None where orjson could not write it):
        # every delivery reads its own copy of ``data`` from it.
        self._bodies: list[bytes | None] = []
        self._raw: dict[int, tuple[bytes, dict[str, str], datetime]] = {}
        # Dedupe: id -> sequence; and when each id expires, oldest first, as two
        # parallel queues (no tuple per publish for the garbage collector to count).
        self._ids: dict[str, int] = {}
        self._expiry_at: deque[float] = deque()
        self._expiry_ids: deque[str] = deque()
        self._durables: dict[str, _Durable] = {}
        self._durable_list: list[_Durable] = []  # the values of _durables, in order
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
        """Build from ``EVENTS_STREAM`` (EVENTS), ``EVENTS_DUPLICATE_WINDOW_S`` (120;
        0, no dedupe, to 604800) and ``EVENTS_MAX_PAYLOAD_BYTES`` (1 MiB, NATS's default;
        1 to 64 MiB, NATS's ceiling). A value out of range is a ``ConfigurationError``
        naming the key (ADR 0025)."""
        window = config.get_float("EVENTS_DUPLICATE_WINDOW_S", 120.0)
        check_number("EVENTS_DUPLICATE_WINDOW_S", window, _WINDOW)
        max_payload = config.get_int("EVENTS_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD)
        check_number("EVENTS_MAX_PAYLOAD_BYTES", max_payload, _MAX_PAYLOAD)
        return cls(
            clock=clock,
            logger=logger,
            stream=config.get_str("EVENTS_STREAM", "EVENTS"),
            duplicate_window=window,
            max_payload=max_payload,
        )

    @property
    def max_payload(self) -> int:
        """The largest wire size (headers and body, in bytes) an event may have."""
        return self._max_payload

    # -- lifecycle ------------------------------------------------------------------

    async def connect(self) -> None:
        """Nothing to connect; present so that the bus drops in where NATS was."""

    async def health_check(self) -> None:
        """``ServiceUnavailable`` once closed, or while a subscription cannot go on (a
        worker ended: as the NATS connection reports it); ``None`` otherwise."""
        if self._closed:
            raise ServiceUnavailable("event bus is closed")
        broken = sorted(s.durable for s in self._subscriptions if s._broken and not s._stopping)
        if broken:
            raise ServiceUnavailable(
                f"subscriptions cannot go on: {', '.join(broken)}",
                details={"reason": "subscription", "durables": broken},
            )

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
        """Store ``event`` (subject defaults to ``event.type``) and return its ack;
        ``BadRequest`` for an invalid subject or an event over ``max_payload``."""
        rid = request_id()
        subject, body = self._check(event, subject, rid)
        return self._append(subject, event, rid, event.id, body, trace=OUTGOING.get())

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        """Publish each event in order; the acks in the same order. Every event is
        checked first: if one is invalid, none is stored."""
        # Every event is checked before any is stored; the durables are woken once per
        # subject stored, in the order the first event of each would have woken them.
        rid = request_id()
        batch = events if isinstance(events, list | tuple) else list(events)
        checked = [self._check(event, subject, rid) for event in batch]
        if not batch:
            return []
        if self._closed:
            raise ServiceUnavailable("event bus is closed")
        trace = OUTGOING.get()  # nothing else runs until this returns: one context
        log = self._subjects
        first = len(log)
        try:
            return [
                self._store(subject_, event, rid, event.id, body, trace=trace)
                for event, (subject_, body) in zip(batch, checked, strict=True)
            ]
        finally:
            self._progress += len(log) - first
            for stored in dict.fromkeys(log[first:]):
                self._wake(stored)

    async def publish_raw(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> PublishAck:
        """Store a message as it would arrive from the wire (bytes and headers), e.g.
        a CloudEvent from another publisher or a poison payload. It is decoded at
        delivery; the ``Nats-Msg-Id`` header, when present, is its dedupe key.
        ``BadRequest`` when headers and payload exceed ``max_payload``."""
        subject = check_publish_subject(subject)
        check_wire_size(subject, bytes(payload), headers, self._max_payload)
        msg_id = None
        for key, value in (headers or {}).items():
            if key.lower() == event_codec.H_MSG_ID.lower():
                msg_id = value
        ack = self._append(subject, None, None, msg_id, None, trace=OUTGOING.get())
        if not ack.duplicate:
            self._raw[ack.sequence - 1] = (bytes(payload), dict(headers or {}), self._clock.now())
        return ack

    def _check(
        self, event: Event, subject: str | None, rid: str | None
    ) -> tuple[str, bytes | None]:
        """The subject to store ``event`` on and its JSON body, once both are valid."""
        if not isinstance(event, Event):
            raise TypeError("publish takes an Event")
        subject = check_publish_subject(event.type if subject is None else subject)
        try:
            body: bytes | None = _dumps(event.data)
        except TypeError:  # integers beyond 64 bits, lone surrogates: the codec's way
            body = None
        size = len(event_codec.encode_data(event.data) if body is None else body)
        # the bound on the header block (see _FIXED_HEADERS)
        chars = 2 * len(event.id) + len(event.type) + len(event.source)
        chars += (
            len(event.organization_id) if rid is None else len(event.organization_id) + len(rid)
        )
        if size + _FIXED_HEADERS + _BYTES_PER_CHAR * chars > self._max_payload:
            wire_body, headers = event_codec.encode(event, request_id=rid)
            check_wire_size(subject, wire_body, headers, self._max_payload)
        return subject, body

    def _append(
        self,
        subject: str,
        event: Event | None,
        rid: str | None,
        msg_id: str | None,
        body: bytes | None,
        *,
        trace: Carrier | None,
    ) -> PublishAck:
        """Store one message (``trace``: OUTGOING's value when it was published) and
        wake its consumers."""
        if self._closed:
            raise ServiceUnavailable("event bus is closed")
        ack = self._store(subject, event, rid, msg_id, body, trace=trace)
        if not ack.duplicate:
            self._wake(subject)
            self._progress += 1
        return ack

    def _store(
        self,
        subject: str,
        event: Event | None,
        rid: str | None,
        msg_id: str | None,
        body: bytes | None,
        *,
        trace: Carrier | None,
    ) -> PublishAck:
        """Append one message to the log, or the ack of the one whose id it repeats
        within the dedupe window."""
        subjects = self._subjects
        if msg_id is not None and self._window > 0:
            now = self._clock.monotonic()
            expiry_at = self._expiry_at
            ids = self._ids
            while expiry_at and expiry_at[0] <= now:
                # An id is re-registered only after its entry expired and was
                # swept here, so the map entry for ``old`` is always this one.
                expiry_at.popleft()
                del ids[self._expiry_ids.popleft()]
            seen = ids.get(msg_id)
            if seen is not None:
                return PublishAck(self._stream, seen, True)
            ids[msg_id] = len(subjects) + 1
            expiry_at.append(now + self._window)
            self._expiry_ids.append(msg_id)
        subjects.append(subject)
        self._events.append(event)
        self._rids.append(rid)
        self._bodies.append(body)
        seq = len(subjects)
        if trace is not None:
            self._traces[seq - 1] = trace
        if event is not None:
            self.published.append(event)
        return PublishAck(self._stream, seq, False)

    def _wake(self, subject: str) -> None:
        """Wake the durables with members that consume ``subject``."""
        for durable in self._durable_list:
            if durable.members and durable.matches(subject):
                durable.has_work.set()

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
        handler_timeout: float | None = None,
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
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            backoff=backoff,
            concurrency=concurrency,
            handler_timeout=handler_timeout,
        )
        group = self._durables.get(durable)
        if group is None:
            group = self._durables[durable] = _Durable(self, durable, subject)
            self._durable_list.append(group)
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
            handler_timeout=None if handler_timeout is None else float(handler_timeout),
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
