"""The NATS adapter's failure handling, driven without a server: fake messages and a
fake client stand in for nats-py so that each failure (an ack that cannot be sent, a
dead letter that cannot be stored, a pull status, a lost pull...) happens on cue."""

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

from adapters import event_codec
from adapters.nats_events import NatsConnection, NatsSettings, NatsSubscription
from adapters.nats_events._errors import AckError, NoResponders, is_retryable
from adapters.nats_events.subscription import _Handoff
from adapters.nats_events.wire import Delivery, header_lines, reply_info, status_of
from domain_errors import ConfigurationError, ServiceUnavailable
from ports.events import Event, PublishAck, Reject
from testing.fakes import FakeClock, RecordingLogger
from testing.strategies import event_texts, events

EVENT = Event(type="orders.placed", source="t", organization_id="o", data={"n": 1})


_ACK_KINDS = {b"": "ack", b"+TERM": "term", b"+WPI": "in_progress"}


def _ack_kind(payload: bytes) -> tuple[str, float | None]:
    """An acknowledgement payload as (kind, nak delay in seconds)."""
    if payload.startswith(b"-NAK"):
        extra = payload[len(b"-NAK") :].strip()
        return ("nak", orjson.loads(extra)["delay"] / 1e9 if extra else None)
    return (_ACK_KINDS.get(payload, payload.decode()), None)


class FakeClient:
    """Just enough of a nats-py client for pulls, acks and stops: records what is
    published; publishing fails with ``publish_error``, or for the ack kinds in
    ``failing`` (recorded first, like a send that was tried)."""

    def __init__(
        self,
        *,
        connected: bool = True,
        publish_error: Exception | None = None,
        failing: tuple[str, ...] = (),
    ) -> None:
        self.is_connected = connected
        self.is_closed = False
        self.published: list[tuple[str, bytes]] = []
        self._error = publish_error
        self._failing = failing

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        if self._error is not None:
            raise self._error
        self.published.append((subject, payload))
        if _ack_kind(payload)[0] in self._failing:
            raise nats.errors.ConnectionClosedError


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
) -> Delivery:
    """A JetStream delivery of EVENT as it comes off the wire, on its own
    recording client (whose acks can be made to fail)."""
    body, hdrs = event_codec.encode(EVENT)
    return Delivery(
        FakeClient(failing=failing),
        b"evt.orders.placed",
        f"$JS.ACK.S.d.{delivered}.7.7.1893456000000000000.0" if reply is None else reply,
        body if data is None else data,
        header_block(hdrs if headers is None else headers),
    )


def acks(msg: Delivery) -> list[tuple[str, float | None]]:
    """The acknowledgements sent for ``msg``, in order."""
    client = msg._nc
    return [_ack_kind(payload) for subject, payload in client.published if subject == msg.reply]


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
) -> NatsSubscription:
    async def ok(event: Event) -> None:
        return None

    return NatsSubscription(
        connection,
        subject="orders.>",
        durable="d",
        handler=handler or ok,
        max_deliver=max_deliver,
        ack_wait=1.0,
        backoff=backoff,
        concurrency=1,
    )


def _logger(connection: NatsConnection) -> RecordingLogger:
    logger = connection._logger
    assert isinstance(logger, RecordingLogger)
    return logger


class TestHandlingFailures:
    """What happens around the handler when the broker side fails."""

    async def test_past_max_deliver_is_dead_lettered_without_the_handler(self) -> None:
        """A delivery beyond max_deliver (a crash on the last attempt) goes to the dead
        letters at once, then is terminated; the handler is not called."""
        connection = _connection()
        stored: list[tuple[str, dict[str, str]]] = []

        async def publish_message(subject: str, body: bytes, headers: dict[str, str]) -> Any:
            stored.append((subject, headers))
            return PublishAck("S_DEAD", 1)

        connection.publish_message = publish_message  # type: ignore[method-assign]
        called: list[Event] = []

        async def handler(event: Event) -> None:
            called.append(event)

        sub = _subscription(connection, handler)
        msg = delivery(delivered=4)
        await sub._process(msg)
        assert called == []
        [(subject, headers)] = stored
        assert subject == "dead.d.orders.placed"
        assert headers["Dead-Letter-Reason"] == "max_deliver"
        assert headers["Dead-Letter-Attempts"] == "4"
        assert headers["Nats-Msg-Id"] == "d:7"
        assert headers["Dead-Letter-Msg-Id"] == EVENT.id
        assert acks(msg) == [("term", None)]
        assert sub.subject == "orders.>"

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
        """A failed nak is a warning (ack_wait will redeliver instead)."""
        connection = _connection()

        async def fail(event: Event) -> None:
            raise RuntimeError("x")

        sub = _subscription(connection, fail)
        msg = delivery(failing=("nak",))
        await sub._process(msg)
        assert acks(msg) == [("nak", 0.5)]
        _logger(connection).assert_logged("nak not sent", level="warning")

    async def test_zero_backoff_naks_without_delay(self) -> None:
        """A zero backoff delay naks for immediate redelivery."""
        connection = _connection()

        async def fail(event: Event) -> None:
            raise RuntimeError("x")

        sub = _subscription(connection, fail, backoff=(0.0,))
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

    async def test_cancelled_handler_naks(self) -> None:
        """A handler cancelled mid-event naks its message for immediate redelivery."""
        connection = _connection()

        async def hang(event: Event) -> None:
            await asyncio.Event().wait()

        sub = _subscription(connection, hang)
        msg = delivery()
        task = asyncio.ensure_future(sub._process(msg))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert acks(msg) == [("nak", None)]


class TestPulling:
    """Pull requests, statuses and the watchdog."""

    async def test_status_messages_adjust_the_credit(self) -> None:
        """100 changes nothing; 408/409 with pending subtract it; 409 'Consumer Deleted'
        and 503 ask for a consumer check; any other status resets and pulls again."""
        connection = _connection()
        client = FakeClient()
        connection._nc = client  # type: ignore[assignment]
        sub = _subscription(connection)

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
        await status("409 Consumer Deleted")
        assert sub._check_consumer
        sub._check_consumer = False
        await status("503")
        assert sub._check_consumer
        assert sub._requested == 0
        assert client.published == []  # both: the watchdog pulls again later
        await status("400 Bad Request")
        assert sub._requested == sub._batch
        request = orjson.loads(client.published[-1][1])
        assert request["batch"] == sub._batch
        assert client.published[-1][0] == "$JS.API.CONSUMER.MSG.NEXT.EVENTS.d"
        _logger(connection).assert_logged(
            "pull status", level="debug", status="400", description="Bad Request"
        )

    async def test_start_needs_the_connections_own_client(self) -> None:
        """A subscription refuses a client without lanes (one NatsConnection did not
        make): its deliveries would never reach the workers."""
        connection = _connection()
        connection._nc = FakeClient()  # type: ignore[assignment]
        connection._state = "open"
        with pytest.raises(ConfigurationError, match="client made by NatsConnection"):
            await _subscription(connection).start()

    async def test_pull_needs_a_connection(self) -> None:
        """No pull is sent while disconnected; a pull that cannot be sent resets the
        credit and is logged."""
        connection = _connection()
        sub = _subscription(connection)
        connection._nc = FakeClient(connected=False)  # type: ignore[assignment]
        await sub._pull()
        assert sub._requested == 0
        connection._nc = FakeClient(  # type: ignore[assignment]
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
        """With credit out and nothing heard for 3 heartbeats, the watchdog drops the
        credit and checks the consumer; a failing check is retried, not fatal."""
        clock = FakeClock()
        connection = _connection(clock)
        client = FakeClient()
        connection._nc = client  # type: ignore[assignment]
        sub = _subscription(connection)
        checks = 0

        async def check() -> None:
            nonlocal checks
            checks += 1
            if checks == 1:
                raise nats.errors.TimeoutError

        sub._recreate_if_lost = check  # type: ignore[method-assign]
        sub._requested = 50
        watchdog = asyncio.ensure_future(sub._watchdog())
        for _ in range(6):
            await asyncio.sleep(0)
            clock.advance(sub._heartbeat)
            await asyncio.sleep(0)
        sub._stopping = True
        clock.advance(sub._heartbeat)
        await watchdog
        assert checks >= 2  # failed once, then retried (and again at each silence)
        _logger(connection).assert_logged("consumer check failed", level="debug")
        assert client.published  # and pulled again

    async def test_keepalive_survives_a_failing_in_progress(self) -> None:
        """+WPI is sent for held messages every ack_wait/2; a failure is only logged."""
        clock = FakeClock()
        sub = _subscription(_connection(clock))
        good, bad = delivery(reply="r1"), delivery(reply="r2", failing=("in_progress",))
        sub._tracked = {"r1": good, "r2": bad}
        keepalive = asyncio.ensure_future(sub._keepalive())
        await asyncio.sleep(0)
        clock.advance(0.5)
        await asyncio.sleep(0)
        sub._stopping = True
        clock.advance(0.5)
        await keepalive
        assert acks(good) == [("in_progress", None)]
        assert acks(bad) == [("in_progress", None)]
        _logger(sub._connection).assert_logged("in-progress not sent", level="debug")


class TestStopping:
    """stop() when the client misbehaves."""

    async def test_stop_falls_back_to_unsubscribe_and_releases_queued(self) -> None:
        """If draining the inbox fails, stop unsubscribes; queued messages are nak'ed."""
        connection = _connection()
        connection._nc = FakeClient()  # type: ignore[assignment]
        sub = _subscription(connection)
        calls: list[str] = []

        class Inbox:
            async def drain(self) -> None:
                calls.append("drain")
                raise nats.errors.ConnectionReconnectingError

            async def unsubscribe(self) -> None:
                calls.append("unsubscribe")

        sub._sub = Inbox()  # type: ignore[assignment]
        queued = delivery(reply="q1")
        sub._tracked["q1"] = queued  # type: ignore[assignment]
        sub._queue.put_nowait(queued)
        await sub.stop(timeout=0.1)
        await sub.stop(timeout=0.1)
        assert calls == ["drain", "unsubscribe"]
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


def test_reply_info_reads_both_ack_subject_forms() -> None:
    """Delivery count and storage time come from v1 and v2 ack subjects."""
    v1 = "$JS.ACK.S.d.3.10.9.1893456000000000000.0"
    v2 = "$JS.ACK.domain.hash.S.d.4.10.9.1893456000000000000.0.token"
    when = datetime(2030, 1, 1, tzinfo=UTC)
    assert reply_info(v1) == (3, when)
    assert reply_info(v2) == (4, when)


async def test_missing_time_falls_back_to_the_storage_time() -> None:
    """An event without ce-time gets the broker's storage time (from the ack subject);
    one that still does not decode is dead-lettered as undecodable."""
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

    stored: list[dict[str, str]] = []

    async def publish_message(subject: str, body: bytes, headers: dict[str, str]) -> Any:
        stored.append(headers)
        return PublishAck("S_DEAD", 1)

    connection.publish_message = publish_message  # type: ignore[method-assign]
    broken = {k: v for k, v in untimed.items() if k.lower() != event_codec.H_TYPE}
    bad = delivery(data=body, headers=broken)
    await sub._process(bad)
    assert len(seen) == 1
    assert stored[0]["Dead-Letter-Reason"] == "undecodable"
    assert acks(bad) == [("term", None)]


async def test_handoff_is_fifo_and_survives_cancelled_getters() -> None:
    """Items come out in order; a getter cancelled while waiting, or after being
    woken, does not swallow an item or a wake-up."""
    handoff = _Handoff()
    assert handoff.empty()
    with pytest.raises(asyncio.QueueEmpty):
        handoff.get_nowait()
    handoff.put_nowait(None)
    assert not handoff.empty()
    assert handoff.get_nowait() is None

    waiting = asyncio.ensure_future(handoff.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    first = asyncio.ensure_future(handoff.get())
    second = asyncio.ensure_future(handoff.get())
    await asyncio.sleep(0)
    msg = delivery()
    handoff.put_nowait(msg)
    first.cancel()  # woken, then cancelled before it could take the item
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) is msg
    assert handoff.empty()


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
        stored: list[str] = []

        async def publish_message(subject: str, body: bytes, headers: dict[str, str]) -> Any:
            stored.append(subject)
            return PublishAck("S_DEAD", 1)

        connection.publish_message = publish_message  # type: ignore[method-assign]
        sub = _subscription(connection)
        msg = delivery(data=b"not json")
        msg._subject = b"evt.orders.\xff"
        await sub._process(msg)
        assert stored == ["dead.d.orders.\ufffd"]
        assert acks(msg) == [("term", None)]

    def test_delivery_reads_the_ack_subject(self) -> None:
        """The stream sequence and subject come from the wire fields, in both ack
        subject forms."""
        msg = delivery()
        assert (msg.stream_sequence, msg.subject) == (7, "evt.orders.placed")
        v2 = delivery(reply="$JS.ACK.dom.hash.S.d.1.42.7.1893456000000000000.0.tok")
        assert v2.stream_sequence == 42
