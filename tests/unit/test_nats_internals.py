"""The NATS adapter's failure handling, driven without a server: fake messages, a
fake client and an in-memory failure record stand in for nats-py and JetStream so
that each failure (an ack that cannot be sent, a dead letter that cannot be stored,
a record that cannot be read, a pull status, a lost pull...) happens on cue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import nats.errors
import nats.js.errors
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg

from adapters import event_codec
from adapters.nats_events import NatsConnection, NatsSettings, NatsSubscription, _internals
from adapters.nats_events._errors import AckError, NoResponders, is_retryable
from adapters.nats_events._internals import lanes_supported
from adapters.nats_events.attempts import Runs
from adapters.nats_events.wire import (
    Delivery,
    header_lines,
    is_ack_subject,
    reply_info,
    status_of,
)
from domain_errors import ServiceUnavailable
from ports.context import current_context
from ports.events import Event, PublishAck, Reject
from testing.fakes import FakeClock, RecordingLogger
from testing.strategies import event_texts, events

EVENT = Event(type="orders.placed", source="t", organization_id="o", data={"n": 1})
ACK_SUBJECT = "$JS.ACK.S.d.{delivered}.7.7.1893456000000000000.0"  # stream sequence 7
SEQUENCE = 7


_ACK_KINDS = {b"": "ack", b"+TERM": "term", b"+WPI": "in_progress"}


def _ack_kind(payload: bytes) -> tuple[str, float | None]:
    """An acknowledgement payload as (kind, nak delay in seconds)."""
    if payload.startswith(b"-NAK"):
        extra = payload[len(b"-NAK") :].strip()
        return ("nak", orjson.loads(extra)["delay"] / 1e9 if extra else None)
    return (_ACK_KINDS.get(payload, payload.decode()), None)


class FakeInbox:
    """The subscription nats-py returns for the pull inbox: records drain and
    unsubscribe; draining fails with ``drain_error``."""

    def __init__(
        self, subject: str, cb: Callable[[Msg], Any] | None, drain_error: Exception | None = None
    ) -> None:
        self.subject = subject
        self.cb = cb
        self.calls: list[str] = []
        self._drain_error = drain_error

    async def drain(self) -> None:
        self.calls.append("drain")
        if self._drain_error is not None:
            raise self._drain_error

    async def unsubscribe(self) -> None:
        self.calls.append("unsubscribe")


class FakeClient:
    """Just enough of a nats-py client (without direct lanes) for pulls, acks,
    inbox subscriptions and stops: records what is published (``requests`` for
    JetStream API requests, ``journal`` for the ack kinds in order); publishing
    fails with ``publish_error``, or for the ack kinds in ``failing`` (recorded
    first, like a send that was tried)."""

    max_payload = 1024 * 1024

    def __init__(
        self,
        *,
        connected: bool = True,
        publish_error: Exception | None = None,
        failing: tuple[str, ...] = (),
        journal: list[str] | None = None,
    ) -> None:
        self.is_connected = connected
        self.is_closed = False
        self.published: list[tuple[str, bytes]] = []
        self.requests: list[tuple[str, dict[str, Any], str]] = []
        self.inboxes: list[FakeInbox] = []
        self.journal = journal if journal is not None else []
        self._error = publish_error
        self._failing = failing

    def new_inbox(self) -> str:
        return f"_INBOX.fake{len(self.inboxes)}"

    async def subscribe(self, subject: str, cb: Callable[[Msg], Any] | None = None) -> FakeInbox:
        inbox = FakeInbox(subject, cb)
        self.inboxes.append(inbox)
        return inbox

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        if self._error is not None:
            raise self._error
        self.published.append((subject, payload))
        if subject.startswith("$JS.API."):
            self.requests.append((subject, orjson.loads(payload), reply))
            return
        kind = _ack_kind(payload)[0]
        self.journal.append(kind)
        if kind in self._failing:
            raise nats.errors.ConnectionClosedError


class RecordingFailures:
    """An in-memory :class:`~adapters.nats_events.attempts.FailureRecord`: run counts
    (and owed dead letters) by (consumer, stream sequence), every call in ``calls``
    (and each write as ``record`` in ``journal``); reading or writing fails with
    ``read_error`` / ``write_error``."""

    def __init__(
        self,
        counts: dict[tuple[str, int], int] | None = None,
        *,
        read_error: Exception | None = None,
        write_error: Exception | None = None,
        journal: list[str] | None = None,
    ) -> None:
        self.counts = dict(counts or {})
        self.owed: dict[tuple[str, int], tuple[str, str]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.journal = journal if journal is not None else []
        self._read_error = read_error
        self._write_error = write_error

    async def read(self, consumer: str, sequence: int) -> Runs:
        self.calls.append(("read", consumer, sequence))
        if self._read_error is not None:
            raise self._read_error
        reason, error = self.owed.get((consumer, sequence), ("", ""))
        return Runs(self.counts.get((consumer, sequence), 0), reason, error)

    async def write(self, consumer: str, sequence: int, runs: Runs) -> None:
        self.calls.append(("record", consumer, sequence, runs.runs))
        self.journal.append("record")
        if self._write_error is not None:
            raise self._write_error
        self.counts[(consumer, sequence)] = runs.runs
        if runs.reason:
            self.owed[(consumer, sequence)] = (runs.reason, runs.error)

    async def forget(self, consumer: str, sequence: int) -> None:
        self.calls.append(("forget", consumer, sequence))
        self.counts.pop((consumer, sequence), None)
        self.owed.pop((consumer, sequence), None)


class Ticks:
    """A clock whose ``sleep`` returns at once, recording the delay; the sleep after
    the first ``limit`` calls ``then`` (which stops the loop under test)."""

    def __init__(self, limit: int, then: Callable[[], None]) -> None:
        self.slept: list[float] = []
        self._limit = limit
        self._then = then

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if len(self.slept) > self._limit:
            self._then()


def header_block(headers: dict[str, str]) -> bytes:
    """Headers as nats-py writes them on the wire."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


def delivery(
    *,
    delivered: int = 1,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    failing: tuple[str, ...] = (),
    reply: str | None = None,
    journal: list[str] | None = None,
) -> Delivery:
    """A JetStream delivery of EVENT (stream sequence 7, delivery count ``delivered``)
    as it comes off the wire, on its own recording client (whose acks can be made to
    fail)."""
    body, hdrs = event_codec.encode(EVENT)
    return Delivery(
        FakeClient(failing=failing, journal=journal),  # type: ignore[arg-type]
        b"evt.orders.placed",
        ACK_SUBJECT.format(delivered=delivered) if reply is None else reply,
        body if data is None else data,
        header_block(hdrs if headers is None else headers),
    )


def sent(client: FakeClient, reply: str) -> list[tuple[str, float | None]]:
    """The acknowledgements ``client`` sent to ``reply``, in order."""
    return [_ack_kind(payload) for subject, payload in client.published if subject == reply]


def acks(msg: Delivery) -> list[tuple[str, float | None]]:
    """The acknowledgements sent for ``msg``, in order."""
    client: object = msg._nc
    assert isinstance(client, FakeClient)
    return sent(client, msg.reply)


def _connection(clock: FakeClock | None = None, **settings: Any) -> NatsConnection:
    return NatsConnection(
        NatsSettings(url="nats://127.0.0.1:1", prefix="evt", **settings),
        logger=RecordingLogger(),
        clock=clock if clock is not None else FakeClock(),
    )


def _subscription(
    connection: NatsConnection,
    handler: Callable[[Event], Any] | None = None,
    *,
    max_deliver: int = 3,
    backoff: tuple[float, ...] = (0.5, 2.0),
    concurrency: int = 1,
    handler_timeout: float | None = None,
    record: RecordingFailures | None = None,
) -> NatsSubscription:
    """A subscription to ``orders.>`` as durable ``d`` (consumer ``hexinfra-d``) whose
    failure record is ``record`` (an empty one by default)."""

    async def ok(event: Event) -> None:
        return None

    sub = NatsSubscription(
        connection,
        subject="orders.>",
        durable="d",
        handler=handler or ok,
        max_deliver=max_deliver,
        ack_wait=1.0,
        backoff=backoff,
        concurrency=concurrency,
        handler_timeout=handler_timeout,
    )
    sub._failures = record if record is not None else RecordingFailures()  # type: ignore[assignment]
    return sub


def _logger(connection: NatsConnection) -> RecordingLogger:
    logger = connection._logger
    assert isinstance(logger, RecordingLogger)
    return logger


def _failing_handler(runs: list[int] | None = None) -> Callable[[Event], Any]:
    """A handler that always raises, appending its attempt number to ``runs``."""

    async def fail(event: Event) -> None:
        if runs is not None:
            runs.append(current_context()["attempt"])
        raise RuntimeError("x")

    return fail


def _storing(connection: NatsConnection) -> list[tuple[str, dict[str, str]]]:
    """Make ``connection`` store every dead letter in the returned list."""
    stored: list[tuple[str, dict[str, str]]] = []

    async def publish_message(subject: str, body: bytes, headers: dict[str, str]) -> Any:
        stored.append((subject, headers))
        return PublishAck("S_DEAD", len(stored))

    connection.publish_message = publish_message  # type: ignore[method-assign]
    return stored


class TestAttempts:
    """Attempts count handler runs: the failure record, read only for redeliveries."""

    async def test_first_delivery_reads_no_record(self) -> None:
        """Delivery 1 runs as attempt 1 without touching the record (the happy path
        reads and writes nothing)."""
        runs: list[int] = []

        async def handler(event: Event) -> None:
            runs.append(current_context()["attempt"])

        record = RecordingFailures()
        sub = _subscription(_connection(), handler, record=record)
        msg = delivery()
        await sub._process(msg)
        assert runs == [1]
        assert record.calls == []
        assert acks(msg) == [("ack", None)]

    async def test_redelivery_runs_as_the_next_attempt(self) -> None:
        """A redelivery of an event with 2 recorded failures runs as attempt 3,
        whatever the server's delivery count."""
        runs: list[int] = []

        async def handler(event: Event) -> None:
            runs.append(current_context()["attempt"])

        connection = _connection()
        record = RecordingFailures({("hexinfra-d", SEQUENCE): 2})
        sub = _subscription(connection, handler, max_deliver=5, record=record)
        await sub._process(delivery(delivered=9))
        assert runs == [3]
        assert record.calls == [
            ("read", "hexinfra-d", SEQUENCE),
            ("record", "hexinfra-d", SEQUENCE, 3),  # the run, before it starts
            ("forget", "hexinfra-d", SEQUENCE),
        ]

    async def test_redelivery_without_failures_is_a_first_attempt(self) -> None:
        """Deliveries that were never handler runs (returned at stop, after a
        reconnect) use up nothing: delivery 9 with no record runs as attempt 1."""
        runs: list[int] = []

        async def handler(event: Event) -> None:
            runs.append(current_context()["attempt"])

        connection = _connection()
        stored = _storing(connection)
        record = RecordingFailures()
        sub = _subscription(connection, handler, max_deliver=3, record=record)
        msg = delivery(delivered=9)
        await sub._process(msg)
        assert runs == [1]
        assert stored == []
        assert acks(msg) == [("ack", None)]
        assert record.calls == [
            ("read", "hexinfra-d", SEQUENCE),
            ("record", "hexinfra-d", SEQUENCE, 1),
            ("forget", "hexinfra-d", SEQUENCE),
        ]

    async def test_a_run_cut_short_by_stop_is_taken_back(self) -> None:
        """A redelivered run cancelled because stop() timed out writes back the record
        it had before the run: a stop is not the handler's failure."""
        started = asyncio.Event()

        async def hangs(event: Event) -> None:
            started.set()
            await asyncio.Event().wait()

        connection = _connection()
        record = RecordingFailures({("hexinfra-d", SEQUENCE): 1})
        sub = _subscription(connection, hangs, max_deliver=3, record=record)
        task = asyncio.ensure_future(sub._process(delivery(delivered=4)))
        await started.wait()
        assert record.counts == {("hexinfra-d", SEQUENCE): 2}  # the run, recorded
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert record.counts == {("hexinfra-d", SEQUENCE): 1}

    async def test_unreadable_record_releases_the_event(self) -> None:
        """A redelivery whose record cannot be read is nak'ed with the first backoff
        delay and logged; the handler does not run blind."""
        runs: list[int] = []
        connection = _connection()
        record = RecordingFailures(read_error=nats.errors.TimeoutError())
        sub = _subscription(connection, _failing_handler(runs), record=record)
        msg = delivery(delivered=2)
        await sub._process(msg)
        assert runs == []
        assert acks(msg) == [("nak", 0.5)]
        assert record.calls == [("read", "hexinfra-d", SEQUENCE)]
        _logger(connection).assert_logged(
            "failure record not readable; the event will come back", level="warning"
        )

    async def test_failed_run_is_recorded_before_the_nak(self) -> None:
        """A failed run writes its run number to the record, then naks with that
        attempt's backoff delay."""
        journal: list[str] = []
        record = RecordingFailures({("hexinfra-d", SEQUENCE): 1}, journal=journal)
        sub = _subscription(_connection(), _failing_handler(), max_deliver=5, record=record)
        msg = delivery(delivered=2, journal=journal)
        await sub._process(msg)
        assert record.calls[1:] == [("record", "hexinfra-d", SEQUENCE, 2)]
        assert journal == ["record", "nak"]
        assert acks(msg) == [("nak", 2.0)]

    async def test_failure_that_cannot_be_recorded_still_naks(self) -> None:
        """If the record cannot be written the nak goes out anyway (logged): at worst
        one run more than max_deliver."""
        connection = _connection()
        record = RecordingFailures(write_error=nats.errors.TimeoutError())
        sub = _subscription(connection, _failing_handler(), record=record)
        msg = delivery()
        await sub._process(msg)
        assert acks(msg) == [("nak", 0.5)]
        _logger(connection).assert_logged(
            "handler run not recorded; max_deliver may be exceeded for this event", level="error"
        )

    async def test_success_after_failures_forgets_the_record(self) -> None:
        """A run that succeeds after recorded failures acks, then purges the record."""
        journal: list[str] = []
        record = RecordingFailures({("hexinfra-d", SEQUENCE): 2}, journal=journal)
        sub = _subscription(_connection(), record=record)
        msg = delivery(delivered=3, journal=journal)
        await sub._process(msg)
        assert acks(msg) == [("ack", None)]
        assert record.calls[-1] == ("forget", "hexinfra-d", SEQUENCE)
        assert record.counts == {}

    async def test_last_failed_run_is_dead_lettered_and_forgotten(self) -> None:
        """The max_deliver-th failed run is dead-lettered (attempts = runs), the
        delivery terminated and the record purged."""
        runs: list[int] = []
        connection = _connection()
        stored = _storing(connection)
        record = RecordingFailures({("hexinfra-d", SEQUENCE): 2})
        sub = _subscription(connection, _failing_handler(runs), max_deliver=3, record=record)
        msg = delivery(delivered=5)
        await sub._process(msg)
        assert runs == [3]
        [(subject, headers)] = stored
        assert subject == "dead.evt.d.orders.placed"
        assert headers["Dead-Letter-Reason"] == "max_deliver"
        assert headers["Dead-Letter-Attempts"] == "3"
        assert acks(msg) == [("term", None)]
        assert record.counts == {}
        _logger(connection).assert_logged(
            "event handler failed for the last time; dead-lettered", level="error", attempt=3
        )

    async def test_recorded_failures_past_max_deliver_dead_letter_without_the_handler(
        self,
    ) -> None:
        """A redelivery whose recorded failures already used up max_deliver goes to the
        dead letters at once, then is terminated; the handler is not called."""
        runs: list[int] = []

        async def handler(event: Event) -> None:
            runs.append(current_context()["attempt"])

        connection = _connection()
        stored = _storing(connection)
        record = RecordingFailures({("hexinfra-d", SEQUENCE): 3})
        sub = _subscription(connection, handler, max_deliver=3, record=record)
        msg = delivery(delivered=4)
        await sub._process(msg)
        assert runs == []
        [(subject, headers)] = stored
        assert subject == "dead.evt.d.orders.placed"
        assert headers["Dead-Letter-Reason"] == "max_deliver"
        assert headers["Dead-Letter-Attempts"] == "3"
        assert headers["Nats-Msg-Id"] == "hexinfra-d:7"  # the consumer: one per service
        assert headers["Dead-Letter-Msg-Id"] == EVENT.id
        assert acks(msg) == [("term", None)]
        assert record.counts == {}
        assert sub.subject == "orders.>"

    async def test_last_failure_whose_dead_letter_was_not_stored_is_not_run_again(
        self,
    ) -> None:
        """If the dead letter of the last failed run cannot be stored, the event comes
        back and is dead-lettered without a max_deliver + 1-th handler run."""
        runs: list[int] = []
        connection = _connection()

        async def refuse(subject: str, body: bytes, headers: dict[str, str]) -> Any:
            raise ServiceUnavailable("dead-letter stream down")

        connection.publish_message = refuse  # type: ignore[method-assign]
        record = RecordingFailures({("hexinfra-d", SEQUENCE): 2})
        sub = _subscription(connection, _failing_handler(runs), max_deliver=3, record=record)
        first = delivery(delivered=3)
        await sub._process(first)
        assert acks(first) == [("nak", 2.0)]
        stored = _storing(connection)
        again = delivery(delivered=4)
        await sub._process(again)
        assert runs == [3]  # the handler ran max_deliver times in all
        assert [headers["Dead-Letter-Attempts"] for _, headers in stored] == ["3"]
        assert acks(again) == [("term", None)]


class TestHandlingFailures:
    """What happens around the handler when it or the broker side fails."""

    async def test_ack_that_cannot_be_sent_is_logged(self) -> None:
        """A failed ack is a warning: the event will simply come again."""
        connection = _connection()
        sub = _subscription(connection)
        msg = delivery(failing=("ack",))
        await sub._process(msg)
        _logger(connection).assert_logged(
            "ack not sent; the event will be redelivered", level="warning"
        )

    async def test_nak_that_cannot_be_sent_is_logged(self) -> None:
        """A failed nak is a warning (ack_wait will redeliver instead); the failure
        was recorded first."""
        connection = _connection()
        record = RecordingFailures()
        sub = _subscription(connection, _failing_handler(), record=record)
        msg = delivery(failing=("nak",))
        await sub._process(msg)
        assert acks(msg) == [("nak", 0.5)]
        assert record.calls == [("record", "hexinfra-d", SEQUENCE, 1)]
        _logger(connection).assert_logged("nak not sent", level="warning")

    async def test_zero_backoff_naks_without_delay(self) -> None:
        """A zero backoff delay naks for immediate redelivery."""
        sub = _subscription(_connection(), _failing_handler(), backoff=(0.0,))
        msg = delivery()
        await sub._process(msg)
        assert acks(msg) == [("nak", None)]

    async def test_dead_letter_that_cannot_be_stored_comes_back(self) -> None:
        """If the dead-letter stream refuses, the event is nak'ed (with the longest
        backoff) instead of dropped, and the failure is logged as an error."""
        connection = _connection()

        async def refuse(subject: str, body: bytes, headers: dict[str, str]) -> Any:
            raise ServiceUnavailable("dead-letter stream down")

        connection.publish_message = refuse  # type: ignore[method-assign]

        async def reject(event: Event) -> None:
            raise Reject("no")

        sub = _subscription(connection, reject)
        msg = delivery()
        await sub._process(msg)
        assert acks(msg) == [("nak", 2.0)]
        _logger(connection).assert_logged(
            "dead letter not stored; the event will come back", level="error"
        )

    async def test_handler_raising_its_own_cancelled_error_is_a_failed_attempt(self) -> None:
        """A CancelledError the handler raises itself (no one cancelled the worker) is
        a failure like any other: recorded and nak'ed with the backoff; the worker
        goes on."""
        connection = _connection()

        async def cancelled(event: Event) -> None:
            raise asyncio.CancelledError

        record = RecordingFailures()
        sub = _subscription(connection, cancelled, record=record)
        msg = delivery()
        sub._tracked[msg.reply] = msg
        sub._queue.put_nowait(msg)
        sub._queue.put_nowait(None)
        await sub._work()  # returns at the None: the worker did not die
        assert record.calls == [("record", "hexinfra-d", SEQUENCE, 1)]
        assert acks(msg) == [("nak", 0.5)]
        assert sub._tracked == {}
        _logger(connection).assert_logged("event handler failed; will retry", attempt=1)

    async def test_run_past_the_handler_timeout_is_a_failed_attempt(self) -> None:
        """A handler still running at handler_timeout is stopped and the run counts as
        a failure (recorded, nak'ed), described as a timeout."""
        connection = _connection()

        async def hang(event: Event) -> None:
            await asyncio.Event().wait()

        record = RecordingFailures()
        sub = _subscription(connection, hang, handler_timeout=0.01, record=record)
        msg = delivery()
        await sub._process(msg)
        assert record.calls == [("record", "hexinfra-d", SEQUENCE, 1)]
        assert acks(msg) == [("nak", 0.5)]
        _logger(connection).assert_logged(
            "event handler failed; will retry", failure="handler_timeout: the handler ran too long"
        )

    async def test_missing_time_falls_back_to_the_storage_time(self) -> None:
        """An event without ce-time gets the broker's storage time (from the ack
        subject); one that still does not decode is dead-lettered as undecodable."""
        connection = _connection()
        seen: list[Event] = []

        async def handler(event: Event) -> None:
            seen.append(event)

        sub = _subscription(connection, handler)
        body, headers = event_codec.encode(EVENT)
        untimed = {k: v for k, v in headers.items() if k.lower() != event_codec.H_TIME}
        msg = delivery(data=body, headers=untimed)
        await sub._process(msg)
        assert [e.timestamp for e in seen] == [datetime(2030, 1, 1, tzinfo=UTC)]
        assert acks(msg) == [("ack", None)]

        stored = _storing(connection)
        broken = {k: v for k, v in untimed.items() if k.lower() != event_codec.H_TYPE}
        bad = delivery(data=body, headers=broken)
        await sub._process(bad)
        assert len(seen) == 1
        assert stored[0][1]["Dead-Letter-Reason"] == "undecodable"
        assert acks(bad) == [("term", None)]


class TestWorkers:
    """Workers never die: they end only at stop, or when stop cancels them."""

    async def test_worker_cancelled_mid_handler_releases_the_event(self) -> None:
        """A worker cancelled while its handler runs (stop timed out) naks the event
        for immediate redelivery, records no failure, and ends cancelled."""
        started = asyncio.Event()

        async def hang(event: Event) -> None:
            started.set()
            await asyncio.Event().wait()

        record = RecordingFailures()
        sub = _subscription(_connection(), hang, record=record)
        msg = delivery()
        sub._tracked[msg.reply] = msg
        sub._queue.put_nowait(msg)
        worker = asyncio.ensure_future(sub._work())
        await started.wait()
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        assert acks(msg) == [("nak", None)]
        assert record.calls == []
        assert sub._tracked == {}

    async def test_worker_survives_a_failure_around_the_handler(self) -> None:
        """If the subscription's own code fails on a delivery, the event is released
        with the first backoff delay, logged, and the worker takes the next one."""
        connection = _connection()
        sub = _subscription(connection)
        processed: list[str] = []

        async def process(msg: Delivery) -> None:
            processed.append(msg.reply)
            if msg.reply == "r1":
                raise RuntimeError("bug")

        sub._process = process  # type: ignore[method-assign]
        first, second = delivery(reply="r1"), delivery(reply="r2")
        sub._tracked = {"r1": first, "r2": second}
        for item in (first, second, None):
            sub._queue.put_nowait(item)
        await sub._work()
        assert processed == ["r1", "r2"]
        assert acks(first) == [("nak", 0.5)]
        assert acks(second) == []
        assert sub._tracked == {}
        _logger(connection).assert_logged(
            "delivery failed inside the subscription; released for redelivery", level="error"
        )


class TestPulling:
    """Pull requests, the prefetch bound, the inbox, statuses and the watchdog."""

    async def test_status_messages_adjust_the_credit(self) -> None:
        """100 changes nothing; 408/409 with pending subtract it and pull again; a
        409 or 503 without it ends the request (the watchdog checks the consumer and
        pulls); anything else (400, a 408 without pending) is logged and left to the
        watchdog, so a forged or unexpected status neither spins nor widens the pull."""
        connection = _connection()
        client = FakeClient()
        sub = _subscription(connection)
        sub._client = client  # type: ignore[assignment]

        async def status(line: str, **headers: str) -> None:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            pending = sub._on_raw(b"_INBOX.x", b"", b"", f"NATS/1.0 {line}\r\n{head}\r\n".encode())
            assert pending is not None  # a status is handled before the next message
            await pending

        sub._requested = 100
        await status("100 Idle Heartbeat", **{"Nats-Last-Consumer": "1", "Nats-Last-Stream": "1"})
        assert sub._requested == 100
        await status("408 Request Timeout", **{"Nats-Pending-Messages": "30"})
        assert sub._requested == 70
        await status("408 Request Timeout")  # no pending count: not the server's
        await status("400 Bad Request")
        assert sub._requested == 70
        assert client.published == []
        _logger(connection).assert_logged(
            "pull status not understood; the watchdog will pull again",
            level="warning",
            status="400",
            description="Bad Request",
        )
        await status("409 Consumer Deleted")
        assert sub._check_consumer
        sub._check_consumer = False
        await status("503")
        assert sub._check_consumer
        assert sub._requested == 0
        assert client.published == []  # the watchdog pulls again later
        await status("409 Leadership Change", **{"Nats-Pending-Messages": "0"})
        assert client.requests[-1][0] == "$JS.API.CONSUMER.MSG.NEXT.EVENTS.hexinfra-d"
        assert client.requests[-1][1]["batch"] == 2  # 2 x concurrency

    @given(
        concurrency=st.integers(1, 8),
        requested=st.integers(0, 20),
        queued=st.integers(0, 20),
    )
    async def test_pull_stays_within_twice_the_concurrency(
        self, concurrency: int, requested: int, queued: int
    ) -> None:
        """A pull never takes requested + queued past 2 x concurrency; a subscription
        with nothing requested and room pulls up to the bound; with a pull out it tops
        up only by at least concurrency."""
        client = FakeClient()
        sub = _subscription(_connection(), concurrency=concurrency)
        sub._client = client  # type: ignore[assignment]
        sub._requested = requested
        for _ in range(queued):
            sub._queue.put_nowait(None)
        await sub._pull()
        batch = sum(request["batch"] for _, request, _ in client.requests)
        window = 2 * concurrency
        assert sub._requested == requested + batch
        if requested + queued >= window:
            assert batch == 0
        else:
            assert requested + batch + queued <= window
        if requested == 0 and queued < window:
            assert batch == window - queued
        if requested > 0 and batch > 0:
            assert batch >= concurrency

    async def test_start_subscribes_the_inbox_through_the_public_api(self) -> None:
        """On a client without direct lanes, start subscribes a new inbox with a
        callback, pulls 2 x concurrency into it, and deliveries reach the handler
        (the pull is topped up as each is handed over); stop drains the inbox."""
        connection = _connection()
        client = FakeClient()
        connection._nc = client  # type: ignore[assignment]
        connection._state = "open"
        handled = asyncio.Event()

        async def handler(event: Event) -> None:
            handled.set()

        sub = _subscription(connection, handler)
        await sub.start()
        [inbox] = client.inboxes
        assert inbox.subject == sub._inbox == "_INBOX.fake0"
        assert inbox.cb is not None
        [(subject, request, reply)] = client.requests
        assert (subject, request["batch"], reply) == (sub._next_subject, 2, inbox.subject)
        assert sub in connection._subscriptions

        body, headers = event_codec.encode(EVENT)
        ack_subject = ACK_SUBJECT.format(delivered=1)
        await inbox.cb(
            Msg(
                _client=client,  # type: ignore[arg-type]
                subject="evt.orders.placed",
                reply=ack_subject,
                data=body,
                headers=headers,
            )
        )
        await handled.wait()
        await sub.stop(timeout=1.0)
        assert sent(client, ack_subject) == [("ack", None)]
        assert [r["batch"] for _, r, _ in client.requests] == [2, 1]
        assert inbox.calls == ["drain"]
        assert sub not in connection._subscriptions

    async def test_foreign_messages_on_the_inbox_are_ignored(self) -> None:
        """A message on the pull inbox whose reply is not a JetStream ack subject, or
        that has neither reply nor status, is neither handled nor answered; logged
        once per 1000."""
        connection = _connection()
        client = FakeClient()
        sub = _subscription(connection)
        sub._client = client  # type: ignore[assignment]
        sub._requested = 2
        assert sub._on_raw(b"_INBOX.x", b"_INBOX.someone.else", b"hi", None) is None
        assert sub._on_raw(b"_INBOX.x", b"$JS.ACK.S.d.x.7.7.1.0", b"hi", None) is None
        for _ in range(999):
            sub._on_raw(b"_INBOX.x", b"reply.elsewhere", b"hi", None)
        assert sub._queue.empty()
        assert sub._tracked == {}
        assert sub._requested == 2
        assert client.published == []
        found = _logger(connection).find("foreign message on the pull inbox ignored")
        assert [(r.level, r.to_dict()["count"]) for r in found] == [
            ("warning", 1),
            ("warning", 1001),
        ]
        assert found[0].to_dict()["subject"] == "_INBOX.x"

        other = _connection()
        silent = _subscription(other)
        pending = silent._on_raw(b"_INBOX.x", b"", b"junk", None)
        assert pending is not None
        await pending
        _logger(other).assert_logged(
            "foreign message on the pull inbox ignored",
            level="warning",
            problem="no reply subject and no status",
        )

    async def test_pull_needs_a_connection(self) -> None:
        """No pull is sent while disconnected; a pull that cannot be sent resets the
        credit and is logged."""
        connection = _connection()
        sub = _subscription(connection)
        sub._client = FakeClient(connected=False)  # type: ignore[assignment]
        await sub._pull()
        assert sub._requested == 0
        sub._client = FakeClient(  # type: ignore[assignment]
            publish_error=nats.errors.OutboundBufferLimitError()
        )
        await sub._pull()
        assert sub._requested == 0
        _logger(connection).assert_logged("pull request not sent", level="debug")

    async def test_message_arriving_after_stop_is_released(self) -> None:
        """A message that arrives once stopping began is nak'ed at once."""
        sub = _subscription(_connection())
        client = FakeClient()
        sub._client = client  # type: ignore[assignment]
        sub._stopping = True
        sub._requested = 1
        block = header_block(event_codec.encode(EVENT)[1])
        reply = b"$JS.ACK.S.d.1.7.7.1893456000000000000.0"
        pending = sub._on_raw(b"evt.orders.placed", reply, b"{}", block)
        assert pending is not None
        await pending
        assert client.published == [(reply.decode(), b"-NAK")]
        assert sub._requested == 0
        assert sub._tracked == {}

    async def test_watchdog_notices_a_silent_pull(self) -> None:
        """With credit out and nothing heard for more than 3 heartbeats, the watchdog
        drops the credit and checks the consumer; a failing check is retried at the
        next heartbeat, not fatal, and then it pulls again."""
        connection = _connection()
        client = FakeClient()
        connection._nc = client  # type: ignore[assignment]
        sub = _subscription(connection)
        sub._client = client  # type: ignore[assignment]
        checks = 0

        async def check() -> None:
            nonlocal checks
            checks += 1
            if checks == 1:
                raise nats.errors.TimeoutError

        def stop() -> None:
            sub._stopping = True

        sub._recreate_if_lost = check  # type: ignore[method-assign]
        ticks = Ticks(5, stop)
        sub._clock = ticks  # type: ignore[assignment]
        sub._requested = 2
        await sub._watchdog()
        assert ticks.slept == [sub._heartbeat] * 6
        assert checks == 2  # at the 4th silent heartbeat (failed), then the 5th
        _logger(connection).assert_logged("consumer check failed", level="debug")
        assert [r["batch"] for _, r, _ in client.requests] == [2]  # and pulled again

    async def test_keepalive_survives_a_failing_in_progress(self) -> None:
        """+WPI is sent for held messages every ack_wait/2; a failure is only logged."""
        sub = _subscription(_connection())

        def stop() -> None:
            sub._stopping = True

        ticks = Ticks(1, stop)
        sub._clock = ticks  # type: ignore[assignment]
        good, bad = delivery(reply="r1"), delivery(reply="r2", failing=("in_progress",))
        sub._tracked = {"r1": good, "r2": bad}
        await sub._keepalive()
        assert ticks.slept == [0.5, 0.5]
        assert acks(good) == [("in_progress", None)]
        assert acks(bad) == [("in_progress", None)]
        _logger(sub._connection).assert_logged("in-progress not sent", level="debug")


class TestStopping:
    """stop() when the client misbehaves."""

    async def test_stop_falls_back_to_unsubscribe_and_releases_queued(self) -> None:
        """If draining the inbox fails, stop unsubscribes; queued messages are nak'ed."""
        sub = _subscription(_connection())
        sub._client = FakeClient()  # type: ignore[assignment]
        inbox = FakeInbox("_INBOX.x", None, drain_error=nats.errors.ConnectionReconnectingError())
        sub._sub = inbox  # type: ignore[assignment]
        queued = delivery(reply="q1")
        sub._tracked["q1"] = queued
        sub._queue.put_nowait(queued)
        await sub.stop(timeout=0.1)
        await sub.stop(timeout=0.1)
        assert inbox.calls == ["drain", "unsubscribe"]
        assert acks(queued) == [("nak", None)]
        assert sub._tracked == {}
        assert not sub.running


class TestPublishInternals:
    """PubAck parsing, error mapping and the pipeline's failure paths."""

    async def test_ack_messages(self) -> None:
        """PubAcks resolve; 503 is 'no responders'; other statuses, API errors and
        garbage fail the future; unknown or settled tokens are ignored."""
        connection = _connection()
        connection._reply_prefix = "p."
        loop = asyncio.get_running_loop()
        futures = {k: loop.create_future() for k in "abcdef"}
        connection._acks = dict(futures)

        def reply(token: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
            return SimpleNamespace(subject=f"p.{token}", data=data, headers=headers)

        await connection._on_ack(reply("a", b'{"stream":"S","seq":3,"duplicate":true}'))
        await connection._on_ack(reply("b", b"", {"Status": "503"}))
        await connection._on_ack(reply("c", b"", {"Status": "408"}))
        err = b'{"error":{"code":400,"err_code":10060,"description":"expected stream"}}'
        await connection._on_ack(reply("d", err))
        await connection._on_ack(reply("e", b"not json"))
        futures["f"].cancel()
        await connection._on_ack(reply("f", b"{}"))
        await connection._on_ack(reply("zzz", b"{}"))
        assert futures["a"].result() == PublishAck("S", 3, True)
        assert isinstance(futures["b"].exception(), NoResponders)
        assert isinstance(futures["c"].exception(), AckError)
        error = futures["d"].exception()
        assert isinstance(error, AckError)
        assert (error.code, error.err_code) == (400, 10060)
        assert futures["e"].exception() is not None

    def test_retryable_and_mapped_errors(self) -> None:
        """503s and transport errors are retried; refusals and a closed connection are
        ServiceUnavailable without retry."""
        connection = _connection()
        assert is_retryable(AckError(503, 0, "busy"))
        assert not is_retryable(AckError(400, 0, "bad"))
        assert is_retryable(nats.js.errors.APIError(code=503))
        assert is_retryable(nats.errors.TimeoutError())
        refused = connection._map_publish_error(AckError(400, 1, "bad"), "s", 1)
        assert isinstance(refused, ServiceUnavailable)
        assert "refused" in str(refused)
        closed = connection._map_publish_error(nats.errors.ConnectionClosedError(), "s", 1)
        assert "closed" in str(closed)

    async def test_refused_batch_is_not_retried(self) -> None:
        """A PubAck error that is not transient fails publish_many at once."""
        connection = _connection()
        sent = 0

        async def send(subject: str, body: bytes, headers: dict[str, str]) -> Any:
            nonlocal sent
            sent += 1
            future = asyncio.get_running_loop().create_future()
            future.set_exception(AckError(400, 10060, "wrong stream"))
            return future

        connection._send = send  # type: ignore[method-assign]
        with pytest.raises(ServiceUnavailable, match="refused"):
            await connection.publish_messages([("evt.a", b"{}", {})] * 3)
        assert sent == 3

    async def test_full_window_without_acks_times_out(self) -> None:
        """With the window full and no ack in time, the rest is not sent and the batch
        fails naming how many events are unconfirmed."""
        connection = _connection(
            publish_window=1, publish_timeout=0.01, publish_retries=1, publish_backoff=0
        )
        sent = 0

        async def send(subject: str, body: bytes, headers: dict[str, str]) -> Any:
            nonlocal sent
            sent += 1
            return asyncio.get_running_loop().create_future()  # never acked

        connection._send = send  # type: ignore[method-assign]
        with pytest.raises(ServiceUnavailable, match="3 of 3 events"):
            await connection.publish_messages([("evt.a", b"{}", {})] * 3)
        assert sent == 2  # one per round: the window never freed

    async def test_send_failures_are_retried(self) -> None:
        """A send that fails with a transient error is sent again in the next round."""
        connection = _connection(publish_backoff=0)
        attempts = 0

        async def send(subject: str, body: bytes, headers: dict[str, str]) -> Any:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise nats.errors.OutboundBufferLimitError
            future = asyncio.get_running_loop().create_future()
            future.set_result(PublishAck("S", attempts))
            return future

        connection._send = send  # type: ignore[method-assign]
        acks = await connection.publish_messages([("evt.a", b"{}", {})])
        assert acks == [PublishAck("S", 2)]

    async def test_request_timeout_cancels_the_wait(self) -> None:
        """A single publish whose ack never comes times out and forgets the future."""
        connection = _connection(publish_timeout=0.01, publish_retries=0)
        pending: list[asyncio.Future[PublishAck]] = []

        async def send(subject: str, body: bytes, headers: dict[str, str]) -> Any:
            future: asyncio.Future[PublishAck] = asyncio.get_running_loop().create_future()
            pending.append(future)
            return future

        connection._send = send  # type: ignore[method-assign]
        with pytest.raises(ServiceUnavailable, match="after 1 attempts"):
            await connection.publish_message("evt.a", b"{}", {})
        assert pending[0].cancelled()

    async def test_shutdown_when_drain_fails(self) -> None:
        """A drain that fails is logged, then the client is closed anyway; pending
        publishes fail with ServiceUnavailable."""
        connection = _connection()
        closed: list[bool] = []

        class Client:
            is_closed = False

            async def drain(self) -> None:
                raise nats.errors.ConnectionReconnectingError

            async def close(self) -> None:
                closed.append(True)

        connection._nc = Client()  # type: ignore[assignment]
        connection._state = "open"
        waiting: asyncio.Future[PublishAck] = asyncio.get_running_loop().create_future()
        connection._acks["1"] = waiting
        await connection.close(timeout=0.1)
        assert closed == [True]
        assert isinstance(waiting.exception(), ServiceUnavailable)
        _logger(connection).assert_logged("nats drain did not finish; closing", level="warning")


# Header lines built from the characters that make parsers disagree: separators,
# every kind of whitespace, line breaks on their own, non-ASCII and invalid UTF-8.
_tricky = st.sampled_from(
    [
        b"a",
        b"Ce-Id",
        b"x",
        b":",
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"\x0b",
        b"\x1c",
        b"\x85",
        b"\xc2\xa0",
        b"\xe2\x80\x83",
        b"\xff",
        b"%",
        b"1",
    ]
)
_header_block_lines = st.lists(st.lists(_tricky, max_size=8).map(b"".join), max_size=6).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines) + b"\r\n"
)


class TestWireHeaders:
    """The subscription reads header blocks itself; it must read them as nats-py does."""

    @given(lines=_header_block_lines | st.binary(max_size=80))
    @example(lines=b" Ce-Id : v \r\nbad name: x\r\nno colon\r\n\r\n")
    def test_header_lines_match_nats_py(self, lines: bytes) -> None:
        """Any block gives exactly what nats-py's own parser gives."""
        assert header_lines(lines) == Client._parse_header_lines(lines)

    @given(lines=_header_block_lines)
    def test_lowered_names_keep_the_last_value(self, lines: bytes) -> None:
        """With lower=True, names are lower-cased and the last line of a name wins."""
        expected: dict[str, str] = {}
        for line in lines.split(b"\r\n"):
            for name, value in Client._parse_header_lines(line).items():
                expected[name.lower()] = value
        assert header_lines(lines, lower=True) == expected

    @given(event=events(allow_surrogates=True), rid=st.none() | event_texts())
    def test_events_survive_the_header_block(self, event: Event, rid: str | None) -> None:
        """Every event, encoded and written as nats-py writes headers, is read back
        through the subscription's own header reading."""
        body, headers = event_codec.encode(event, request_id=rid)
        msg = delivery(data=body, headers=headers)
        decoded = event_codec.decode_message(msg.data, msg.lowered_headers(), lowered=True)
        assert decoded.event == event
        assert decoded.request_id == rid
        assert msg.headers == headers

    def test_status_lines(self) -> None:
        """Status code, description and headers of the pull statuses the server sends."""
        assert status_of(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 3\r\n\r\n") == (
            "408",
            "Request Timeout",
            {"Nats-Pending-Messages": "3"},
        )
        assert status_of(b"NATS/1.0 503\r\n\r\n") == ("503", "", {})
        assert status_of(None) == ("", "", {})

    async def test_undecodable_subject_bytes_still_dead_letter(self) -> None:
        """A delivery whose subject is not UTF-8 and whose payload does not decode is
        dead-lettered under a readable subject; the worker survives."""
        connection = _connection()
        stored = _storing(connection)
        sub = _subscription(connection)
        msg = delivery(data=b"not json")
        msg._subject = b"evt.orders.\xff"
        await sub._process(msg)
        assert [subject for subject, _ in stored] == ["dead.evt.d.orders.\ufffd"]
        assert acks(msg) == [("term", None)]

    def test_delivery_reads_the_ack_subject(self) -> None:
        """The stream sequence and subject come from the wire fields, in both ack
        subject forms."""
        msg = delivery()
        assert (msg.stream_sequence, msg.subject) == (7, "evt.orders.placed")
        v2 = delivery(reply="$JS.ACK.dom.hash.S.d.1.42.7.1893456000000000000.0.tok")
        assert v2.stream_sequence == 42

    def test_reply_info_reads_both_ack_subject_forms(self) -> None:
        """Delivery count and storage time come from v1 and v2 ack subjects."""
        v1 = "$JS.ACK.S.d.3.10.9.1893456000000000000.0"
        v2 = "$JS.ACK.domain.hash.S.d.4.10.9.1893456000000000000.0.token"
        when = datetime(2030, 1, 1, tzinfo=UTC)
        assert reply_info(v1) == (3, when)
        assert reply_info(v2) == (4, when)

    def test_ack_subjects_are_told_from_foreign_replies(self) -> None:
        """Both ack subject forms with numeric fields are deliveries; anything else
        on the inbox is foreign."""
        assert is_ack_subject(b"$JS.ACK.S.d.3.10.9.1893456000000000000.0")
        assert is_ack_subject(b"$JS.ACK.domain.hash.S.d.4.10.9.1893456000000000000.0.token")
        assert not is_ack_subject(b"$JS.ACK.S.d.x.10.9.1893456000000000000.0")
        assert not is_ack_subject(b"$JS.ACK.S.d.3.10.9")
        assert not is_ack_subject(b"_INBOX.abc")


class TestDirectLaneCheck:
    """The direct lane is used only when the installed nats-py matches it."""

    def test_the_installed_nats_py_matches(self) -> None:
        """nats-py as pinned: ``Client._process_msg(sid, subject, reply, data, headers)``."""
        assert lanes_supported()

    def test_a_changed_entry_point_is_refused(self) -> None:
        """A nats-py whose parser entry point changed (renamed parameters, a sync
        method, or none at all) is refused, so the connection uses the public API."""

        class Renamed(Client):
            async def _process_msg(
                self, sid: int, subject: bytes, reply: bytes, payload: bytes, hdr: bytes
            ) -> None:
                return None

        class Sync(Client):
            def _process_msg(self, *args: Any) -> None:  # type: ignore[override]
                return None

        class Gone(Client):
            _process_msg = None  # type: ignore[assignment]

        assert not lanes_supported(Renamed)
        assert not lanes_supported(Sync)
        assert not lanes_supported(Gone)

    def test_a_public_client_gets_raw_parts_through_a_callback(self) -> None:
        """Without lanes, a message nats-py parsed is written back into the raw parts
        the lane reads: a status on the version line, other headers as lines."""
        block = _internals._header_block({"Status": "408", "Description": "Request Timeout"})
        assert block == b"NATS/1.0 408 Request Timeout\r\n\r\n"
        block = _internals._header_block({"ce-id": "1", "Nats-Msg-Id": "1"})
        assert block is not None
        assert header_lines(block[len(b"NATS/1.0\r\n") :]) == {"ce-id": "1", "Nats-Msg-Id": "1"}
        assert _internals._header_block(None) is None
