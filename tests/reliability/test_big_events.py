"""Big events on a real NATS server: refused before sending, never fatal to the
connection; a client the server closes is replaced; dead letters always stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest

from adapters import event_codec
from adapters._event_rules import wire_size
from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from adapters.nats_events.dead_letters import H_DEAD_TRUNCATED, dead_letter_message
from domain_errors import BadRequest, ServiceUnavailable
from ports.events import Event, Reject
from testing.fakes import RecordingLogger
from testing.servers import NatsServer, nats_server
from tests.helpers import wait_until, wait_until_async

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with nats_server() as started:
        yield started


@pytest.fixture
async def logger() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
async def conn(
    server: NatsServer, request: pytest.FixtureRequest, logger: RecordingLogger
) -> AsyncIterator[NatsConnection]:
    name = "BIG" + request.node.name.upper().replace("TEST_", "_")[:40]
    connection = NatsConnection.from_config(
        InMemoryConfig(
            {
                "NATS_URL": server.url,
                "EVENTS_STREAM": name,
                "EVENTS_PREFIX": name.lower(),
                "EVENTS_DEAD_PREFIX": f"{name.lower()}-dead",
                "EVENTS_STORAGE": "file",
                "EVENTS_PUBLISH_TIMEOUT_S": "2",
                "EVENTS_PULL_EXPIRES_S": "0.5",
                "NATS_CONNECT_BACKOFF_S": "0.05",
                "NATS_RECONNECT_WAIT_S": "0.05",
            }
        ),
        logger=logger,
    )
    await connection.connect()
    yield connection
    await connection.close(timeout=2)


def _event(data: dict[str, object] | None = None) -> Event:
    return Event(type="big.thing", source="tests", organization_id="org", data=data or {})


def _padded(body_size: int) -> Event:
    """An event whose JSON body is exactly ``body_size`` bytes."""
    event = _event({"pad": ""})
    overhead = len(event_codec.encode(event)[0])
    padded = _event({"pad": "x" * (body_size - overhead)})
    assert len(event_codec.encode(padded)[0]) == body_size
    return padded


async def _stored(conn: NatsConnection) -> int:
    info = await conn.jetstream.stream_info(conn.settings.stream)
    return info.state.messages


async def _healthy(conn: NatsConnection) -> bool:
    try:
        await conn.health_check()
    except ServiceUnavailable:
        return False
    return True


async def test_headers_that_push_an_event_over_max_payload_are_refused(
    conn: NatsConnection,
) -> None:
    """A body 10 bytes under max_payload plus our headers -> BadRequest with both sizes."""
    limit = conn.max_payload
    big = _padded(limit - 10)
    publisher, handled = NatsPublisher(conn), asyncio.Queue[Event]()
    with pytest.raises(BadRequest) as caught:
        await publisher.publish(big)
    size = wire_size(*event_codec.encode(big))
    assert f"{size} bytes" in caught.value.message
    assert f"{limit} bytes" in caught.value.message
    assert caught.value.details["max_payload"] == limit

    async def handler(event: Event) -> None:
        handled.put_nowait(event)

    sub = await NatsSubscriber(conn).subscribe("big.>", handler, durable="after")
    small = _event({"n": 1})
    await publisher.publish(small)
    assert (await asyncio.wait_for(handled.get(), 10)).id == small.id
    assert await _stored(conn) == 1
    await conn.health_check()
    await sub.stop()


async def test_publish_many_with_one_oversize_event_sends_none(conn: NatsConnection) -> None:
    """One event over the limit in a batch -> BadRequest and nothing stored."""
    publisher = NatsPublisher(conn)
    batch = [_event({"n": 1}), _padded(conn.max_payload - 10), _event({"n": 2})]
    with pytest.raises(BadRequest):
        await publisher.publish_many(batch)
    assert await _stored(conn) == 0
    acks = await publisher.publish_many([batch[0], batch[2]])
    assert [a.sequence for a in acks] == [1, 2]


async def test_a_client_the_server_closed_is_replaced(
    conn: NatsConnection, logger: RecordingLogger
) -> None:
    """An oversize raw publish makes the server close our client: it is replaced,
    health recovers, publishing and consuming resume."""
    publisher, handled = NatsPublisher(conn), asyncio.Queue[Event]()

    async def handler(event: Event) -> None:
        handled.put_nowait(event)

    sub = await NatsSubscriber(conn).subscribe("big.>", handler, durable="survivor")
    first = _event({"n": 1})
    await publisher.publish(first)
    assert (await asyncio.wait_for(handled.get(), 10)).id == first.id

    old = conn.client
    limit = conn.max_payload
    await old.publish(
        f"{conn.settings.prefix}.big.raw",
        b"x" * (limit - 10),
        headers={"X-Big": "v" * 100},
    )
    await wait_until(lambda: old.is_closed, timeout=10, what="server closed the client")
    await wait_until_async(lambda: _healthy(conn), timeout=15, what="health recovered")
    assert conn.client is not old
    logger.assert_logged("nats server closed the client for good; replacing it", level="error")
    assert len(logger.find("nats server closed the client for good; replacing it")) == 1
    logger.assert_logged("nats client replaced", level="info")

    second = _event({"n": 2})
    await publisher.publish(second)
    assert (await asyncio.wait_for(handled.get(), 15)).id == second.id
    assert sub.running
    await sub.stop()


async def test_publishing_fails_fast_while_the_client_is_replaced(
    conn: NatsConnection, server: NatsServer
) -> None:
    """While the replacement cannot connect, health and publish say ServiceUnavailable
    at once; close() stops the replacement."""
    old = conn.client
    server.stop()
    try:
        await old.close()  # closed by "something else", the server is gone meanwhile
        with pytest.raises(ServiceUnavailable) as caught:
            await conn.health_check()
        assert caught.value.details["reason"] in ("replacing", "closed by server")
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await NatsPublisher(conn).publish(_event())
        assert time.monotonic() - began < 1.0
    finally:
        server.start()
    await wait_until_async(lambda: _healthy(conn), timeout=20, what="health recovered")
    await NatsPublisher(conn).publish(_event())


async def test_close_cancels_a_replacement_in_progress(
    conn: NatsConnection, server: NatsServer
) -> None:
    """close() while the replacement keeps failing returns and leaves no task behind."""
    server.stop()
    try:
        await conn.client.close()
        await asyncio.wait_for(conn.close(timeout=1), 5)
        replacer = conn._replacer
        assert replacer is None or replacer.done()
    finally:
        server.start()


async def test_a_rejected_event_whose_dead_letter_would_overflow_is_stored(
    conn: NatsConnection, logger: RecordingLogger
) -> None:
    """An event that only just fits, rejected: its dead letter is stored (trimmed to
    fit), the subscription goes on, and the event does not come back."""
    publisher, subscriber = NatsPublisher(conn), NatsSubscriber(conn)
    runs: list[str] = []

    async def handler(event: Event) -> None:
        runs.append(event.id)
        raise Reject("no: " + "r" * 400)

    sub = await subscriber.subscribe("big.>", handler, durable="rejecter")
    limit = conn.max_payload
    probe = _event({"pad": ""})
    headers_size = wire_size(b"", event_codec.encode(probe)[1])
    big = _padded(limit - headers_size - 5)
    await publisher.publish(big)
    await wait_until_async(
        lambda: _dead_count(subscriber), timeout=15, what="the dead letter stored"
    )
    (letter,) = await subscriber.dead_letters()
    assert letter.reason == "rejected"
    assert letter.subject == "big.thing"
    assert letter.durable == "rejecter"
    assert letter.payload == event_codec.encode(big)[0] or (
        letter.payload == b"" and letter.headers.get(H_DEAD_TRUNCATED) == "body"
    )
    assert runs == [big.id]
    assert sub.running
    logger.assert_not_logged("dead letter not stored; the event will come back")
    await sub.stop()


async def _dead_count(subscriber: NatsSubscriber) -> bool:
    return len(await subscriber.dead_letters()) >= 1


async def test_a_foreign_message_with_unsendable_headers_is_dead_lettered(
    conn: NatsConnection, server: NatsServer
) -> None:
    """A foreign message with a header name nats-py refuses and a
    Nats-Expected-Last-Sequence header: its dead letter is storable."""
    wire = f"{conn.settings.prefix}.big.foreign"
    await _foreign_publish(server, wire, _foreign_headers(conn, "foreign-1"), b"not json")
    await wait_until_async(lambda: _has(conn, 1), timeout=10, what="foreign message stored")
    stored = await conn.jetstream.get_msg(conn.settings.stream, 1)
    assert stored.headers is not None
    assert "bad(name)" in stored.headers
    subject, body, headers = dead_letter_message(
        subject="big.foreign",
        durable="reader",
        data=stored.data or b"",
        headers=stored.headers,
        reason="undecodable",
        attempts=1,
        error="not JSON",
        stream_sequence=1,
        dead_prefix=conn.settings.dead_prefix,
        max_payload=conn.max_payload,
    )
    await conn.publish_message(subject, body, headers)
    (letter,) = await NatsSubscriber(conn).dead_letters()
    assert letter.payload == b"not json"
    assert letter.headers["Nats-Msg-Id"] == "foreign-1"
    assert "bad(name)" not in letter.headers
    assert not any(k.startswith("Nats-Expected") for k in letter.headers)
    await conn.health_check()


async def test_a_foreign_message_is_dead_lettered_by_a_subscription(
    conn: NatsConnection, server: NatsServer
) -> None:
    """The same foreign message through a subscription: dead-lettered as undecodable,
    stored, and the subscription and connection go on."""
    subscriber = NatsSubscriber(conn)

    async def handler(event: Event) -> None:
        raise AssertionError("undecodable messages never reach the handler")

    sub = await subscriber.subscribe("big.>", handler, durable="foreign")
    wire = f"{conn.settings.prefix}.big.foreign"
    await _foreign_publish(server, wire, _foreign_headers(conn, "foreign-2"), b"?")
    await wait_until_async(lambda: _dead_count(subscriber), timeout=15, what="dead letter")
    (letter,) = await subscriber.dead_letters()
    assert letter.reason == "undecodable"
    assert letter.payload == b"?"
    assert sub.running
    await conn.health_check()
    await sub.stop()


def _foreign_headers(conn: NatsConnection, msg_id: str) -> bytes:
    """Headers the events stream accepts but that would make a copy of them fail on the
    dead-letter stream (wrong stream), and a name nats-py refuses to send."""
    return (
        f"NATS/1.0\r\nbad(name): 1\r\nNats-Expected-Last-Sequence: 0\r\n"
        f"Nats-Expected-Stream: {conn.settings.stream}\r\nNats-Msg-Id: {msg_id}\r\n"
        f"ce-id: {msg_id}\r\n\r\n"
    ).encode()


async def _has(conn: NatsConnection, count: int) -> bool:
    return await _stored(conn) >= count


async def _foreign_publish(server: NatsServer, subject: str, block: bytes, body: bytes) -> None:
    """Publish as a foreign client would, with headers nats-py refuses to send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        await reader.readline()  # INFO
        connect = {"verbose": False, "pedantic": False, "headers": True, "protocol": 1}
        writer.write(b"CONNECT " + orjson.dumps(connect) + b"\r\n")
        writer.write(
            f"HPUB {subject} {len(block)} {len(block) + len(body)}\r\n".encode()
            + block
            + body
            + b"\r\nPING\r\n"
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line == b"PONG\r\n", line
    finally:
        writer.close()
        await writer.wait_closed()
