"""NatsSubscriber and NatsSubscription: durable pull consumers feeding handlers."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Sequence
from typing import Final

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription as NatsSubscription_
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from adapters import event_codec
from adapters._delivery_policy import (
    Verdict,
    after_run,
    before_run,
    is_own_cancellation,
    notify_dead_lettered,
    notify_ran,
    observer_of,
)
from adapters._delivery_policy import undecodable as undecodable_verdict
from adapters._event_rules import (
    REASON_MAX_DELIVER,
    backoff_delay,
    check_durable,
    check_subscribe_options,
    check_subscribe_subject,
    describe,
)
from adapters._trace_carrier import incoming
from adapters.nats_events._errors import failure_reason
from adapters.nats_events._internals import drop_lane, subscribe_lane
from adapters.nats_events.attempts import FailureRecord, Runs
from adapters.nats_events.connection import NatsConnection
from adapters.nats_events.dead_letters import dead_letter_from, dead_letter_message
from adapters.nats_events.wire import Delivery, attempt_of, is_ack_subject, reply_info, status_of
from domain_errors import Conflict, ErrorCode, ServiceUnavailable
from ports.context import bind_context
from ports.events import (
    DEFAULT_ACK_WAIT,
    DEFAULT_BACKOFF,
    DEFAULT_MAX_DELIVER,
    DeadLetter,
    Event,
    Handler,
)

__all__ = ["NatsSubscriber", "NatsSubscription"]

_PENDING_MSGS: Final = "Nats-Pending-Messages"
_FOREIGN_LOG_EVERY: Final = 1000


class NatsSubscription:
    """A running subscription: a durable pull consumer fed continuously (the
    :class:`ports.events.Subscription` port).

    At most ``2 x concurrency`` events are requested or queued and not yet handed to
    a handler, so a slow member never sits on work another member could do. Attempts
    count handler runs (:mod:`adapters.nats_events.attempts`), never deliveries.
    """

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
        handler_timeout: float | None = None,
    ) -> None:
        s = connection.settings
        self._connection = connection
        self._logger = connection._logger
        self._clock = connection._clock
        self._subject = subject
        self._durable = durable
        self._consumer = s.consumer_name(durable)
        self._wire_subject = f"{s.prefix}.{subject}"
        self._prefix_len = len(s.prefix) + 1
        self._handler = handler
        # TracedSubscriber's handler carries an observer of the verdicts (ADR 0031).
        self._observer = observer_of(handler)
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._backoff = backoff
        self._concurrency = concurrency
        self._handler_timeout = handler_timeout
        self._window = 2 * concurrency
        self._top_up = max(1, concurrency)
        self._expires = s.pull_expires
        self._heartbeat = s.pull_expires / 5
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{s.stream}.{self._consumer}"
        self._inbox = ""
        self._client: NatsClient | None = None
        self._sub: NatsSubscription_ | None = None
        self._failures = FailureRecord(
            lambda: connection.jetstream,
            s.stream,
            storage=s.storage,
            replicas=s.replicas,
            max_age=s.max_age,
        )
        self._lifecycle = asyncio.Lock()
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._tracked: dict[str, Delivery] = {}
        self._requested = 0
        self._heard = 0  # messages heard on the inbox (deliveries and statuses)
        self._quiet = 0  # watchdog ticks in a row without one
        self._foreign = 0
        self._check_consumer = False
        self._stopping = False
        self._broken: str | None = None
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
    def consumer(self) -> str:
        """The consumer's name on the server: ``<SERVICE_NAME>-<durable>``."""
        return self._consumer

    @property
    def running(self) -> bool:
        """True while it delivers: not stopped, and no part of it has died."""
        return not self._stopping and self._broken is None

    @property
    def problem(self) -> str | None:
        """Why the subscription cannot go on (``running`` is false), if it broke."""
        return self._broken

    def consumer_config(self) -> ConsumerConfig:
        """The durable consumer's configuration as this subscription wants it."""
        return ConsumerConfig(
            name=self._consumer,
            durable_name=self._consumer,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=self._wire_subject,
            ack_wait=self._ack_wait,
            # Attempts are counted by handler runs (FailureRecord), not by the server.
            max_deliver=-1,
            max_ack_pending=self._connection.settings.max_ack_pending,
        )

    async def ensure_consumer(self) -> None:
        """Create the durable consumer, or align an existing one's ack_wait;
        ``Conflict`` if it exists with another subject. Opens the failure record."""
        js = self._connection.jetstream
        s = self._connection.settings
        await self._failures.open()
        try:
            info = await js.consumer_info(s.stream, self._consumer)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(s.stream, self.consumer_config())
            return
        if info.config.filter_subject != self._wire_subject:
            current = info.config.filter_subject or ""
            raise Conflict(
                f"durable {self._durable!r} already consumes "
                f"{current[self._prefix_len :]!r}, not {self._subject!r}",
                details={"durable": self._durable},
            )
        if abs((info.config.ack_wait or 0) - self._ack_wait) > 1e-3:
            await js.add_consumer(s.stream, self.consumer_config())

    async def start(self) -> None:
        """Subscribe the pull inbox, start the workers and the first pull. Workers run
        in a context of their own: a handler's context comes from its event alone."""
        loop = asyncio.get_running_loop()
        await self._subscribe_inbox()
        self._workers = [
            loop.create_task(
                self._work(), name=f"events:{self._durable}:{i}", context=contextvars.Context()
            )
            for i in range(self._concurrency)
        ]
        self._tasks = [
            loop.create_task(self._keepalive(), name=f"events:{self._durable}:keepalive"),
            loop.create_task(self._watchdog(), name=f"events:{self._durable}:watchdog"),
        ]
        for task in (*self._workers, *self._tasks):
            task.add_done_callback(self._on_task_done)
        self._connection._register(self)
        await self._pull()

    async def _subscribe_inbox(self) -> None:
        nc = self._connection.client
        inbox = nc.new_inbox()
        sub = await subscribe_lane(nc, inbox, self._on_raw)
        # Client, inbox and subscription change together: stop() never sees a mix.
        self._client, self._inbox, self._sub = nc, inbox, sub

    async def resubscribe(self) -> None:
        """Subscribe the pull inbox again on the connection's current client (the old
        one was closed and replaced), then pull. Held deliveries ack through it. A
        failure leaves the subscription broken (``running`` false, health says so)."""
        async with self._lifecycle:
            if self._stopping:
                return
            try:
                await self._subscribe_inbox()
            except Exception as exc:
                self._broken = f"pull inbox not resubscribed: {failure_reason(exc)}"
                self._logger.error(
                    "subscription cannot go on", durable=self._durable, problem=self._broken
                )
                raise
            self._broken = None
            assert self._client is not None
            for msg in self._tracked.values():
                msg.rebind(self._client)
            self._requested = 0
            self._check_consumer = True
            self._quiet = 0
        await self._pull()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        if task.cancelled():
            why = "cancelled"
        else:
            exc = task.exception()
            why = describe(exc) if exc is not None else "returned"
        self._broken = f"{task.get_name()} ended: {why}"
        with contextlib.suppress(Exception):
            self._logger.error(
                "subscription cannot go on", durable=self._durable, problem=self._broken
            )

    # --- pulling ---------------------------------------------------------------------

    async def _pull(self) -> None:
        """Top up the outstanding pull so that requested + queued stays within
        ``2 x concurrency``, in steps of at least ``concurrency``."""
        if self._stopping:
            return
        want = self._window - self._requested - self._queue.qsize()
        if want <= 0 or (self._requested > 0 and want < self._top_up):
            return
        nc = self._client
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
            self._requested -= want
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
        status message (no reply subject) is handled before the next message; anything
        else is foreign (another client wrote to our inbox): logged and ignored."""
        self._heard += 1
        if not reply:
            return self._on_status(headers)
        if not is_ack_subject(reply):
            self._on_foreign(subject, "not a JetStream delivery")
            return None
        if self._requested > 0:
            self._requested -= 1
        assert self._client is not None
        msg = Delivery(self._client, subject, reply.decode(), data, headers)
        if self._stopping:
            return self._release(msg)
        self._tracked[msg.reply] = msg
        self._queue.put_nowait(msg)
        return None

    def _on_foreign(self, subject: bytes, what: str) -> None:
        self._foreign += 1
        if self._foreign % _FOREIGN_LOG_EVERY == 1:
            self._logger.warning(
                "foreign message on the pull inbox ignored",
                durable=self._durable,
                subject=subject.decode("utf-8", "replace")[:200],
                problem=what,
                count=self._foreign,
            )

    @staticmethod
    async def _release(msg: Delivery) -> None:
        with contextlib.suppress(Exception):
            await msg.nak()

    async def _on_status(self, raw: bytes | None) -> None:
        """A status on the inbox. Only what the server sends for a pull moves the
        credit; anything else is left to the watchdog, which re-pulls when the pull
        goes quiet, so a forged or unexpected status can neither spin nor widen it."""
        status, description, headers = status_of(raw)
        if not status.isdigit():
            self._on_foreign(self._inbox.encode(), "no reply subject and no status")
            return
        if status == "100":
            return  # idle heartbeat: the pull is alive
        pending = headers.get(_PENDING_MSGS)
        if status in ("408", "409") and pending is not None and pending.isdigit():
            # The request ended with ``pending`` of its messages never sent.
            self._requested = max(0, self._requested - int(pending))
            if status == "409" and "deleted" in description.lower():
                self._check_consumer = True
                return
            await self._pull()
            return
        if status in ("503", "409"):
            # No responders, the consumer gone, a leader change...: the request is
            # over. The watchdog checks the consumer and pulls again at its next tick.
            self._requested = 0
            self._check_consumer = True
            return
        self._logger.warning(
            "pull status not understood; the watchdog will pull again",
            durable=self._durable,
            status=status,
            description=description[:200],
        )

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
                        "consumer check failed",
                        durable=self._durable,
                        reason=failure_reason(exc),
                    )
                    continue
            await self._pull()

    async def _recreate_if_lost(self) -> None:
        js = self._connection.jetstream
        stream = self._connection.settings.stream
        try:
            await js.consumer_info(stream, self._consumer)
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
            if self._requested + queue.qsize() <= self._window - self._top_up:
                # Top up as the event is handed over, so the pull's round trip
                # overlaps the handler instead of following it.
                await self._pull()
            try:
                await self._process(msg)
            except BaseException as exc:
                if is_own_cancellation(exc):
                    # stop() timed out: the event goes back at once, using up nothing.
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    raise
                # Our own code failed around the handler: never let a worker die.
                with contextlib.suppress(Exception):
                    self._logger.error(
                        "delivery failed inside the subscription; released for redelivery",
                        durable=self._durable,
                        failure=describe(exc),
                    )
                with contextlib.suppress(Exception):
                    await msg.nak(delay=backoff_delay(self._backoff, 1) or None)
            finally:
                tracked.pop(msg.reply, None)

    async def _process(self, msg: Delivery) -> None:
        decoded = await self._decode(msg)
        if decoded is None:
            return
        # Every line about this event (retries, dead letters) carries its request id;
        # the producer's trace context (if any) is there for TracedSubscriber (ADR 0031).
        with bind_context(request_id=decoded.request_id), incoming(decoded.trace):
            await self._handle(msg, decoded)

    async def _handle(self, msg: Delivery, decoded: event_codec.Decoded) -> None:
        reply = msg.reply
        event = decoded.event
        redelivered = attempt_of(reply) > 1
        # A first delivery was never run: the record is read only for redeliveries.
        runs = Runs() if not redelivered else await self._runs_of(msg, event)
        if runs is None:
            return
        attempt = runs.runs + 1
        owed = Verdict("dead_letter", reason=runs.reason, error=runs.error) if runs.reason else None
        verdict = before_run(attempt, self._max_deliver, owed=owed)
        if verdict is not None:
            await self._dead_letter(msg, verdict, runs.runs, event, recorded=True)
            return
        # A redelivery records its run before it starts: a run that takes the process
        # down counts too, so an event that crashes every member is bounded.
        recorded = redelivered and await self._record(msg, event, Runs(attempt))
        try:
            failure, timed_out = await self._run(event, decoded.request_id, attempt)
        except BaseException:
            # Only this task's own cancellation (stop() timed out) escapes a run: it is
            # not the handler's failure, so the run recorded before it is taken back.
            if recorded:
                with contextlib.suppress(Exception):
                    await self._failures.write(self._consumer, msg.stream_sequence, runs)
            raise
        if failure is None:
            notify_ran(self._observer, "ack")
            try:
                await msg.ack()
            except Exception as exc:
                self._logger.warning(
                    "ack not sent; the event will be redelivered",
                    event_id=event.id,
                    reason=failure_reason(exc),
                )
            if redelivered:
                await self._forget(msg)
            return
        verdict = after_run(
            failure,
            attempt=attempt,
            max_deliver=self._max_deliver,
            backoff=self._backoff,
            timed_out=timed_out,
        )
        notify_ran(self._observer, verdict.action)
        if verdict.action == "retry":
            self._logger.warning(
                "event handler failed; will retry",
                event_id=event.id,
                durable=self._durable,
                attempt=attempt,
                retry_in_s=verdict.delay,
                failure=verdict.error,
            )
            if not recorded:
                await self._record(msg, event, Runs(attempt))
            try:
                await msg.nak(delay=verdict.delay if verdict.delay > 0 else None)
            except Exception as exc:
                self._logger.warning("nak not sent", event_id=event.id, reason=failure_reason(exc))
            return
        if verdict.reason == REASON_MAX_DELIVER:
            self._logger.error(
                "event handler failed for the last time; dead-lettered",
                event_id=event.id,
                durable=self._durable,
                attempt=attempt,
                failure=verdict.error,
            )
        # Recorded with its verdict first: if the dead letter is not stored (or we die
        # before it is), the redelivery is dead-lettered without running again.
        owed_record = Runs(attempt, verdict.reason, verdict.error)
        recorded = await self._record(msg, event, owed_record) or recorded
        await self._dead_letter(msg, verdict, attempt, event, recorded=recorded)

    async def _decode(self, msg: Delivery) -> event_codec.Decoded | None:
        """The event in ``msg``; ``None`` when it does not decode (dead-lettered)."""
        headers = msg.lowered_headers()
        try:
            try:
                return event_codec.decode_message(msg.data, headers, lowered=True)
            except event_codec.EventDecodeError:
                # The broker's storage time stands in for a missing ce-time. Decoding
                # is pure, so any other problem recurs; building the datetime only
                # here saves it on every well-formed event.
                return event_codec.decode_message(
                    msg.data, headers, lowered=True, default_time=reply_info(msg.reply)[1]
                )
        except event_codec.EventDecodeError as exc:
            self._logger.error(
                "undecodable event dead-lettered",
                subject=msg.subject,
                durable=self._durable,
                reason=exc.message,
            )
            await self._dead_letter(msg, undecodable_verdict(exc.message), 0, None)
            return None

    async def _run(
        self, event: Event, request_id: str | None, attempt: int
    ) -> tuple[BaseException | None, bool]:
        """Run the handler once: what it raised (anything but this task's own
        cancellation), and whether it ran past ``handler_timeout``."""
        timed_out = False
        try:
            with bind_context(
                request_id=request_id,
                event_id=event.id,
                event_type=event.type,
                organization_id=event.organization_id,
                attempt=attempt,
            ):
                if self._handler_timeout is None:
                    await self._handler(event)
                else:
                    async with asyncio.timeout(self._handler_timeout) as deadline:
                        try:
                            await self._handler(event)
                        finally:
                            timed_out = deadline.expired()
        except BaseException as exc:
            if is_own_cancellation(exc):
                raise
            return exc, timed_out
        if timed_out:
            # It caught the timeout's cancellation and returned: still too long (as on
            # the in-memory bus, which stops waiting at the deadline).
            return TimeoutError(f"handler ran longer than {self._handler_timeout} s"), True
        return None, False

    async def _runs_of(self, msg: Delivery, event: Event) -> Runs | None:
        """The record of ``msg``'s runs; ``None`` (and the event released for later)
        when it cannot be read: running the handler blind could exceed ``max_deliver``."""
        try:
            return await self._failures.read(self._consumer, msg.stream_sequence)
        except Exception as exc:
            self._logger.warning(
                "failure record not readable; the event will come back",
                event_id=event.id,
                durable=self._durable,
                reason=failure_reason(exc),
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=backoff_delay(self._backoff, 1) or None)
            return None

    async def _record(self, msg: Delivery, event: Event, runs: Runs) -> bool:
        """Record ``runs`` for ``msg``; whether the record was written."""
        try:
            await self._failures.write(self._consumer, msg.stream_sequence, runs)
        except Exception as exc:
            self._logger.error(
                "handler run not recorded; max_deliver may be exceeded for this event",
                event_id=event.id,
                durable=self._durable,
                reason=failure_reason(exc),
            )
            return False
        return True

    async def _forget(self, msg: Delivery) -> None:
        await self._failures.forget(self._consumer, msg.stream_sequence)

    async def _dead_letter(
        self,
        msg: Delivery,
        verdict: Verdict,
        attempts: int,
        event: Event | None,
        *,
        recorded: bool = False,
    ) -> None:
        connection = self._connection
        s = connection.settings
        subject, body, headers = dead_letter_message(
            subject=msg.subject[self._prefix_len :],
            durable=self._durable,
            consumer=self._consumer,
            data=msg.data,
            headers=msg.headers,
            reason=verdict.reason,
            attempts=attempts,
            error=verdict.error,
            stream_sequence=msg.stream_sequence,
            dead_prefix=s.dead_prefix,
            max_payload=connection.message_limit(s.dead_stream),
        )
        event_id = event.id if event is not None else None
        try:
            await connection.publish_message(subject, body, headers)
        except Exception as exc:
            self._logger.error(
                "dead letter not stored; the event will come back",
                event_id=event_id,
                durable=self._durable,
                dead_letter_reason=verdict.reason,
                reason=failure_reason(exc),
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=max(self._backoff or (1.0,)))
            return
        notify_dead_lettered(self._observer, verdict.reason)
        self._logger.warning(
            "event dead-lettered",
            event_id=event_id,
            durable=self._durable,
            dead_letter_reason=verdict.reason,
            attempts=attempts,
        )
        with contextlib.suppress(Exception):
            await msg.term()
        if recorded:
            await self._forget(msg)

    # --- stopping --------------------------------------------------------------------

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; release messages not started (nak, for the durable's other
        members; a release uses up no attempt); let running handlers finish and ack for
        up to ``timeout`` seconds, then cancel them (their events are nak'ed).
        Idempotent, concurrency-safe."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop(timeout))
        await asyncio.shield(self._stopped)

    async def _stop(self, timeout: float) -> None:
        async with self._lifecycle:
            self._stopping = True
        sub = self._sub
        nc = self._client
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
        if sub is not None and nc is not None:
            drop_lane(nc, sub)
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
        handler_timeout: float | None = None,
    ) -> NatsSubscription:
        """Start consuming ``subject`` (relative, wildcards allowed) as ``durable``.

        ``Conflict`` if the durable exists with another subject; ``BadRequest``
        for an invalid subject, durable or option; ``ServiceUnavailable`` when
        JetStream does not answer.
        """
        check_subscribe_subject(subject)
        check_durable(durable)
        delays = check_subscribe_options(
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            backoff=backoff,
            concurrency=concurrency,
            handler_timeout=handler_timeout,
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
            handler_timeout=handler_timeout,
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
            if info.state.messages == 0 or limit <= 0:
                return []
            sub = await js.subscribe(
                f"{s.dead_prefix}.>", stream=s.dead_stream, ordered_consumer=True
            )
            letters = []
            try:
                # The stream may hold letters of other prefixes (another service, an
                # older default): count ours from the first one's pending number.
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except nats.errors.TimeoutError:
                    return []
                letters.append(dead_letter_from(msg))
                count = min(limit, 1 + msg.metadata.num_pending)
                while len(letters) < count:
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
