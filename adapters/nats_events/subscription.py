"""NatsSubscriber and NatsSubscription: durable pull consumers feeding handlers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Final

import nats.js.errors
import orjson
from nats.aio.subscription import Subscription as NatsSubscription_
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from adapters import event_codec
from adapters._event_rules import (
    REASON_MAX_DELIVER,
    REASON_REJECTED,
    REASON_UNDECODABLE,
    backoff_delay,
    check_durable,
    check_subscribe_options,
    check_subscribe_subject,
    describe,
)
from adapters.nats_events._errors import failure_reason
from adapters.nats_events._internals import Client
from adapters.nats_events.connection import NatsConnection
from adapters.nats_events.dead_letters import (
    H_DEAD_ATTEMPTS,
    H_DEAD_DURABLE,
    H_DEAD_ERROR,
    H_DEAD_MSG_ID,
    H_DEAD_REASON,
    H_DEAD_SUBJECT,
    dead_letter_from,
)
from adapters.nats_events.wire import Delivery, attempt_of, reply_info, status_of
from domain_errors import ConfigurationError, Conflict, ErrorCode, ServiceUnavailable
from ports.context import bind_context
from ports.events import (
    DEFAULT_ACK_WAIT,
    DEFAULT_BACKOFF,
    DEFAULT_MAX_DELIVER,
    DeadLetter,
    Event,
    Handler,
    Reject,
)

__all__ = ["NatsSubscriber", "NatsSubscription"]

_PENDING_MSGS: Final = "Nats-Pending-Messages"


class _Handoff:
    """The FIFO from the pull inbox to the worker tasks: the part of
    :class:`asyncio.Queue` the subscription uses (``put_nowait``, ``get_nowait``,
    ``get``, ``empty``; unbounded), without its size and join bookkeeping. It sits
    on every delivery."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: deque[Delivery | None] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Delivery | None) -> None:
        self._items.append(item)
        if self._getters:
            self._wake_next()

    def get_nowait(self) -> Delivery | None:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> Delivery | None:
        items = self._items
        while not items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # in case it is still waiting
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if items and not getter.cancelled():
                    # Woken, then cancelled before taking the item: pass the wake-up on.
                    self._wake_next()
                raise
        return items.popleft()

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return


class NatsSubscription:
    """A running subscription: a durable pull consumer fed continuously (the
    :class:`ports.events.Subscription` port)."""

    def __init__(
        self,
        connection: NatsConnection,
        *,
        subject: str,
        durable: str,
        handler: Handler,
        max_deliver: int,
        ack_wait: float,
        backoff: tuple[float, ...],
        concurrency: int,
    ) -> None:
        s = connection.settings
        self._connection = connection
        self._logger = connection._logger
        self._clock = connection._clock
        self._subject = subject
        self._durable = durable
        self._wire_subject = f"{s.prefix}.{subject}"
        self._prefix_len = len(s.prefix) + 1
        self._handler = handler
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._backoff = backoff
        self._concurrency = concurrency
        self._batch = max(s.pull_batch, concurrency)
        self._expires = s.pull_expires
        self._heartbeat = max(0.05, s.pull_expires / 5)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{s.stream}.{durable}"
        self._inbox = ""
        self._client: Client | None = None
        self._sub: NatsSubscription_ | None = None
        self._queue = _Handoff()
        self._tracked: dict[str, Delivery] = {}
        self._requested = 0
        self._heard = 0  # messages heard on the inbox (deliveries and statuses)
        self._quiet = 0  # watchdog ticks in a row without one
        self._check_consumer = False
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []

    @property
    def subject(self) -> str:
        """The subject filter (relative to ``EVENTS_PREFIX``)."""
        return self._subject

    @property
    def durable(self) -> str:
        """The durable consumer this subscription belongs to."""
        return self._durable

    @property
    def running(self) -> bool:
        """Whether :meth:`stop` has not been called."""
        return not self._stopping

    def consumer_config(self) -> ConsumerConfig:
        """The durable consumer's configuration as this subscription wants it."""
        return ConsumerConfig(
            name=self._durable,
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=self._wire_subject,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=self._connection.settings.max_ack_pending,
        )

    async def ensure_consumer(self) -> None:
        """Create the durable consumer, or align an existing one's ack_wait;
        ``Conflict`` if it exists with another subject."""
        js = self._connection.jetstream
        stream = self._connection.settings.stream
        try:
            info = await js.consumer_info(stream, self._durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, self.consumer_config())
            return
        if info.config.filter_subject != self._wire_subject:
            current = info.config.filter_subject or ""
            raise Conflict(
                f"durable {self._durable!r} already consumes "
                f"{current[self._prefix_len :]!r}, not {self._subject!r}",
                details={"durable": self._durable},
            )
        if abs((info.config.ack_wait or 0) - self._ack_wait) > 1e-3:
            await js.add_consumer(stream, self.consumer_config())

    async def start(self) -> None:
        """Subscribe the pull inbox (on a direct lane), start the workers and the first
        pull."""
        nc = self._connection.client
        if not isinstance(nc, Client):
            raise ConfigurationError("NatsSubscription needs a client made by NatsConnection")
        loop = asyncio.get_running_loop()
        self._client = nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox)
        nc.lanes[self._sub._id] = self._on_raw
        self._workers = [
            loop.create_task(self._work(), name=f"events:{self._durable}:{i}")
            for i in range(self._concurrency)
        ]
        self._tasks = [
            loop.create_task(self._keepalive(), name=f"events:{self._durable}:keepalive"),
            loop.create_task(self._watchdog(), name=f"events:{self._durable}:watchdog"),
        ]
        self._connection._register(self)
        await self._pull()

    # --- pulling ---------------------------------------------------------------------

    async def _pull(self) -> None:
        """Top up the outstanding pull request when half the batch is used."""
        if self._stopping:
            return
        want = self._batch - self._requested - len(self._tracked)
        if want <= 0 or (self._requested > 0 and want < self._batch // 2):
            return
        nc = self._connection._nc
        if nc is None or not nc.is_connected:
            return
        self._requested += want
        request = {
            "batch": want,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        try:
            await nc.publish(self._next_subject, orjson.dumps(request), reply=self._inbox)
        except Exception as exc:
            self._requested = 0
            self._logger.debug(
                "pull request not sent", durable=self._durable, reason=failure_reason(exc)
            )

    def _on_reconnected(self) -> None:
        self._requested = 0
        self._check_consumer = True
        self._quiet = 0

    def _on_raw(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> Awaitable[None] | None:
        """The inbox's lane: a delivery goes to the workers without an await; a
        status message (no reply subject) is handled before the next message."""
        self._heard += 1
        if not reply:
            return self._on_status(headers)
        if self._requested > 0:
            self._requested -= 1
        assert self._client is not None
        msg = Delivery(self._client, subject, reply.decode(), data, headers)
        if self._stopping:
            return self._release(msg)
        self._tracked[msg.reply] = msg
        self._queue.put_nowait(msg)
        return None

    @staticmethod
    async def _release(msg: Delivery) -> None:
        with contextlib.suppress(Exception):
            await msg.nak()

    async def _on_status(self, raw: bytes | None) -> None:
        status, description, headers = status_of(raw)
        if status == "100":
            return  # idle heartbeat: the pull is alive
        pending = headers.get(_PENDING_MSGS)
        if status in ("408", "409") and pending is not None and pending.isdigit():
            self._requested = max(0, self._requested - int(pending))
        else:
            self._requested = 0
        if status not in ("408", "404"):
            self._logger.debug(
                "pull status", durable=self._durable, status=status, description=description
            )
        if status == "503" or (status == "409" and "deleted" in description.lower()):
            # No responders, or the consumer is gone: the watchdog re-creates it if
            # needed and pulls again after a heartbeat.
            self._check_consumer = True
            return
        await self._pull()

    async def _watchdog(self) -> None:
        """Re-issue a lost pull (no heartbeat) and re-create a lost consumer."""
        heard = self._heard
        while True:
            await self._clock.sleep(self._heartbeat)
            if self._stopping:
                return
            # Counting ticks, not reading the clock, keeps the per-message cost an add.
            if self._heard != heard:
                heard, self._quiet = self._heard, 0
            else:
                self._quiet += 1
            if self._requested > 0 and self._quiet > 3:
                self._requested = 0
                self._check_consumer = True
            if self._check_consumer and self._connection.connected:
                try:
                    await self._recreate_if_lost()
                    self._check_consumer = False
                except Exception as exc:
                    self._logger.debug(
                        "consumer check failed", durable=self._durable, reason=failure_reason(exc)
                    )
                    continue
            await self._pull()

    async def _recreate_if_lost(self) -> None:
        js = self._connection.jetstream
        stream = self._connection.settings.stream
        try:
            await js.consumer_info(stream, self._durable)
        except nats.js.errors.NotFoundError:
            self._logger.warning("consumer lost; re-creating it", durable=self._durable)
            try:
                await js.add_consumer(stream, self.consumer_config())
            except nats.js.errors.NotFoundError:
                await self._connection.ensure_streams()
                await js.add_consumer(stream, self.consumer_config())
        self._quiet = 0

    async def _keepalive(self) -> None:
        """Tell the server that held messages are in progress, every ack_wait / 2."""
        interval = max(0.02, self._ack_wait / 2)
        while True:
            await self._clock.sleep(interval)
            if self._stopping:
                return
            for msg in list(self._tracked.values()):
                try:
                    await msg.in_progress()
                except Exception as exc:
                    self._logger.debug("in-progress not sent", reason=failure_reason(exc))
                    break

    # --- handling --------------------------------------------------------------------

    async def _work(self) -> None:
        queue = self._queue
        tracked = self._tracked
        while True:
            try:
                msg = queue.get_nowait()
            except asyncio.QueueEmpty:
                msg = await queue.get()
            if msg is None:
                return
            try:
                await self._process(msg)
            finally:
                tracked.pop(msg.reply, None)
            if self._batch - self._requested - len(tracked) >= self._batch // 2:
                await self._pull()

    async def _process(self, msg: Delivery) -> None:
        reply = msg.reply
        attempt = attempt_of(reply)
        headers = msg.lowered_headers()
        try:
            try:
                decoded = event_codec.decode_message(msg.data, headers, lowered=True)
            except event_codec.EventDecodeError:
                # The broker's storage time stands in for a missing ce-time. Decoding
                # is pure, so any other problem recurs; building the datetime only
                # here saves it on every well-formed event.
                decoded = event_codec.decode_message(
                    msg.data, headers, lowered=True, default_time=reply_info(reply)[1]
                )
        except event_codec.EventDecodeError as exc:
            await self._undecodable(msg, attempt, exc.message)
            return
        event = decoded.event
        if attempt > self._max_deliver:
            await self._dead_letter(msg, REASON_MAX_DELIVER, attempt, "delivery limit reached")
            return
        try:
            with bind_context(
                request_id=decoded.request_id,
                event_id=event.id,
                event_type=event.type,
                organization_id=event.organization_id,
                attempt=attempt,
            ):
                await self._handler(event)
        except Reject as exc:
            await self._dead_letter(msg, REASON_REJECTED, attempt, exc.reason)
        except Exception as exc:
            await self._failed(msg, event, attempt, exc)
        except BaseException:
            # Killed mid-event: let the next delivery happen now, not after ack_wait.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        else:
            try:
                await msg._nc.publish(reply, b"")  # msg.ack(), one call fewer
            except Exception as exc:
                self._logger.warning(
                    "ack not sent; the event will be redelivered",
                    event_id=event.id,
                    reason=failure_reason(exc),
                )

    async def _undecodable(self, msg: Delivery, attempt: int, problem: str) -> None:
        self._logger.error(
            "undecodable event dead-lettered",
            subject=msg.subject,
            durable=self._durable,
            reason=problem,
        )
        await self._dead_letter(msg, REASON_UNDECODABLE, attempt, problem)

    async def _failed(self, msg: Delivery, event: Event, attempt: int, exc: Exception) -> None:
        if attempt >= self._max_deliver:
            self._logger.error(
                "event handler failed for the last time; dead-lettered",
                exc=exc,
                event_id=event.id,
                durable=self._durable,
                attempt=attempt,
            )
            await self._dead_letter(msg, REASON_MAX_DELIVER, attempt, describe(exc))
            return
        delay = backoff_delay(self._backoff, attempt)
        self._logger.warning(
            "event handler failed; will retry",
            event_id=event.id,
            durable=self._durable,
            attempt=attempt,
            retry_in_s=delay,
            failure=describe(exc),
        )
        try:
            await msg.nak(delay=delay if delay > 0 else None)
        except Exception as nak_exc:
            self._logger.warning("nak not sent", event_id=event.id, reason=failure_reason(nak_exc))

    async def _dead_letter(self, msg: Delivery, reason: str, attempts: int, error: str) -> None:
        connection = self._connection
        s = connection.settings
        subject = msg.subject[self._prefix_len :]
        headers = msg.headers
        original_id = None
        for key in list(headers):
            if key.lower() == event_codec.H_MSG_ID.lower():
                original_id = headers.pop(key)
        if original_id is not None:
            headers[H_DEAD_MSG_ID] = original_id
        headers.update(
            {
                H_DEAD_SUBJECT: event_codec.header_value(subject),
                H_DEAD_DURABLE: self._durable,
                H_DEAD_REASON: reason,
                H_DEAD_ATTEMPTS: str(attempts),
                H_DEAD_ERROR: event_codec.header_value(error),
                # Dedupe the dead letter itself: once per (durable, stream sequence).
                event_codec.H_MSG_ID: f"{self._durable}:{msg.stream_sequence}",
            }
        )
        try:
            await connection.publish_message(
                f"{s.dead_prefix}.{self._durable}.{subject}", msg.data, headers
            )
        except Exception as exc:
            self._logger.error(
                "dead letter not stored; the event will come back",
                exc=exc,
                durable=self._durable,
                reason=reason,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=max(self._backoff or (1.0,)))
            return
        self._logger.warning(
            "event dead-lettered", durable=self._durable, reason=reason, attempts=attempts
        )
        with contextlib.suppress(Exception):
            await msg.term()

    # --- stopping --------------------------------------------------------------------

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; release messages not started (nak, for the durable's other
        members); let running handlers finish and ack for up to ``timeout`` seconds,
        then cancel them (their events are nak'ed). Idempotent, concurrency-safe."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop(timeout))
        await asyncio.shield(self._stopped)

    async def _stop(self, timeout: float) -> None:
        self._stopping = True
        sub = self._sub
        nc = self._connection._nc
        if sub is not None and nc is not None and not nc.is_closed:
            try:
                # Unsubscribe and flush: after this no message of ours is in flight.
                await asyncio.wait_for(
                    sub.drain(),  # type: ignore[no-untyped-call]
                    timeout=max(0.1, min(timeout, 2.0)),
                )
            except Exception:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if sub is not None and self._client is not None:
            self._client.lanes.pop(sub._id, None)
        released: list[Delivery] = []
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if msg is not None:
                released.append(msg)
                self._tracked.pop(msg.reply, None)
        for msg in released:
            with contextlib.suppress(Exception):
                await msg.nak()
        for _ in self._workers:
            self._queue.put_nowait(None)
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=max(0.0, timeout))
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._connection._unregister(self)


class NatsSubscriber:
    """:class:`ports.events.Subscriber` on JetStream durable pull consumers."""

    def __init__(self, connection: NatsConnection) -> None:
        self._connection = connection

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
    ) -> NatsSubscription:
        """Start consuming ``subject`` (relative, wildcards allowed) as ``durable``.

        ``Conflict`` if the durable exists with another subject; ``BadRequest``
        for an invalid subject, durable or option; ``ServiceUnavailable`` when
        JetStream does not answer.
        """
        check_subscribe_subject(subject)
        check_durable(durable)
        delays = check_subscribe_options(
            max_deliver=max_deliver, ack_wait=ack_wait, backoff=backoff, concurrency=concurrency
        )
        subscription = NatsSubscription(
            self._connection,
            subject=subject,
            durable=durable,
            handler=handler,
            max_deliver=max_deliver,
            ack_wait=float(ack_wait),
            backoff=delays,
            concurrency=concurrency,
        )
        try:
            await subscription.ensure_consumer()
            await subscription.start()
        except (Conflict, ServiceUnavailable):
            raise
        except Exception as exc:
            raise ServiceUnavailable(
                f"JetStream did not set up durable {durable!r}: {failure_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"durable": durable},
            ) from exc
        return subscription

    async def dead_letters(self, *, limit: int = 1000, timeout: float = 5.0) -> list[DeadLetter]:
        """The dead letters stored so far (oldest first, at most ``limit``)."""
        connection = self._connection
        s = connection.settings
        js = connection.jetstream
        try:
            info = await js.stream_info(s.dead_stream)
            count = min(limit, info.state.messages)
            if count == 0:
                return []
            sub = await js.subscribe(
                f"{s.dead_prefix}.>", stream=s.dead_stream, ordered_consumer=True
            )
            letters = []
            try:
                for _ in range(count):
                    msg = await sub.next_msg(timeout=timeout)
                    letters.append(dead_letter_from(msg))
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        except Exception as exc:
            raise ServiceUnavailable(
                f"JetStream did not return the dead letters: {failure_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"stream": s.dead_stream},
            ) from exc
        return letters
