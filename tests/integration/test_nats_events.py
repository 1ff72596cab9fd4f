"""The NATS adapter beyond the contract: settings, connecting, reconnecting, streams,
publish retries and dedupe under timeouts, lost consumers and streams, dead letters on
the wire, and CloudEvents interop through a real server."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event, to_binary_event
from cloudevents.core.v1.event import CloudEvent

from adapters.memory import InMemoryConfig
from adapters.nats_events import (
    H_DEAD_ATTEMPTS,
    H_DEAD_DURABLE,
    H_DEAD_REASON,
    H_DEAD_SUBJECT,
    NatsConnection,
    NatsPublisher,
    NatsSettings,
    NatsSubscriber,
)
from adapters.nats_events.settings import redact_url
from domain_errors import BadRequest, ConfigurationError, ErrorCode, ServiceUnavailable
from ports.context import current_context
from ports.events import Event, Reject
from testing.fakes import RecordingLogger
from testing.servers import NatsServer, free_port, nats_server
from tests.helpers import wait_until, wait_until_async

pytestmark = pytest.mark.integration

_names = itertools.count(1)


def _event(n: int = 0, type_: str = "orders.placed", **data: Any) -> Event:
    return Event(type=type_, source="it", organization_id="org", data={"n": n, **data})


def _config(url: str, name: str, **extra: str) -> InMemoryConfig:
    return InMemoryConfig(
        {
            "NATS_URL": url,
            "EVENTS_STREAM": name,
            "EVENTS_PREFIX": name.lower(),
            "EVENTS_DEAD_PREFIX": f"{name.lower()}-dead",
            "EVENTS_STORAGE": "memory",
            "EVENTS_PULL_EXPIRES_S": "1",
            "EVENTS_PUBLISH_BACKOFF_S": "0.02",
            **extra,
        }
    )


@pytest.fixture
def logger() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
async def connection(nats_url: str, logger: RecordingLogger) -> AsyncIterator[NatsConnection]:
    conn = NatsConnection.from_config(_config(nats_url, f"NE{next(_names)}"), logger=logger)
    await conn.connect()
    yield conn
    js = conn.jetstream
    for stream in (conn.settings.stream, conn.settings.dead_stream):
        try:
            await js.delete_stream(stream)
        except Exception:
            continue
    await conn.close()


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    """A dedicated JetStream server this test may stop and start."""
    with nats_server() as server:
        yield server


class TestSettings:
    """NatsSettings from a ConfigSource."""

    def test_defaults(self) -> None:
        """Only NATS_URL is required; the rest has the documented defaults."""
        s = NatsSettings.from_config(InMemoryConfig({"NATS_URL": "nats://a:1, nats://b:2"}))
        assert (s.stream, s.prefix, s.dead_prefix, s.dead_stream) == (
            "EVENTS",
            "events",
            "dead.events",
            "EVENTS_DEAD",
        )
        assert (s.replicas, s.duplicate_window, s.publish_retries, s.storage) == (
            1,
            120.0,
            3,
            "file",
        )
        assert s.servers == ["nats://a:1", "nats://b:2"]

    def test_missing_url(self) -> None:
        """Without NATS_URL: ConfigurationError naming it."""
        with pytest.raises(ConfigurationError, match="NATS_URL"):
            NatsSettings.from_config(InMemoryConfig({}))

    @pytest.mark.parametrize(
        ("values", "key"),
        [
            ({"EVENTS_STREAM": "bad.name"}, "EVENTS_STREAM"),
            ({"EVENTS_PREFIX": "a..b"}, "EVENTS_PREFIX"),
            ({"EVENTS_DEAD_PREFIX": "events"}, "EVENTS_DEAD_PREFIX"),
            ({"EVENTS_STORAGE": "disk"}, "EVENTS_STORAGE"),
            ({"EVENTS_REPLICAS": "0"}, "replicas"),
            ({"EVENTS_PUBLISH_RETRIES": "-1"}, "publish_retries"),
            ({"NATS_URL": "  "}, "NATS_URL"),
        ],
    )
    def test_invalid_values(self, values: dict[str, str], key: str) -> None:
        """Bad names or numbers raise ConfigurationError naming the setting."""
        with pytest.raises(ConfigurationError, match=key):
            NatsSettings.from_config(InMemoryConfig({"NATS_URL": "nats://x:1", **values}))

    def test_passwords_never_show(self) -> None:
        """The settings repr and redact_url hide passwords and tokens."""
        s = NatsSettings(url="nats://user:s3cret@host:4222")
        assert "s3cret" not in repr(s)
        assert redact_url("nats://tok3n@host:1") == "nats://[REDACTED]@host:1"
        for url in (
            "nats://p@sss3cret@host:1",  # a token holding "@"
            "nats://u:p@ss/s3cret@h",
            "nats://h:1?token=s3cret",
        ):
            assert "s3cret" not in repr(NatsSettings(url=url))
            assert "s3cret" not in redact_url(url)


class TestConnecting:
    """connect retries the first connection, close is final, health tells the truth."""

    async def test_unreachable_server_fails_after_the_retries(
        self, logger: RecordingLogger
    ) -> None:
        """With nothing listening: ServiceUnavailable after NATS_CONNECT_RETRIES attempts,
        each retry logged, the password nowhere."""
        url = f"nats://user:hunter2@127.0.0.1:{free_port()}"
        conn = NatsConnection.from_config(
            _config(
                url,
                "UNREACH",
                NATS_CONNECT_RETRIES="3",
                NATS_CONNECT_BACKOFF_S="0.01",
                NATS_RECONNECT_WAIT_S="0.01",
            ),
            logger=logger,
        )
        with pytest.raises(ServiceUnavailable) as caught:
            await conn.connect()
        assert caught.value.code == ErrorCode.BROKER_UNAVAILABLE
        assert caught.value.details["attempts"] == 3
        assert "hunter2" not in str(caught.value)
        assert len(logger.find("nats not reachable, retrying")) == 2
        assert all("hunter2" not in str(r.to_dict()) for r in logger.records)

    async def test_connects_once_the_server_comes_up(self, logger: RecordingLogger) -> None:
        """A server that starts while connect() is retrying is connected to."""
        server = NatsServer()
        try:
            conn = NatsConnection.from_config(
                _config(
                    server.url, "LATE", NATS_CONNECT_RETRIES="50", NATS_CONNECT_BACKOFF_S="0.05"
                ),
                logger=logger,
            )
            await asyncio.gather(conn.connect(), asyncio.to_thread(server.start))
            assert conn.connected
            await conn.health_check()
            await conn.close()
        finally:
            server.close()

    async def test_lifecycle_errors(self, nats_url: str) -> None:
        """Before connect and after close the connection refuses work; close is idempotent."""
        conn = NatsConnection.from_config(_config(nats_url, f"LC{next(_names)}"))
        with pytest.raises(ServiceUnavailable):
            await NatsPublisher(conn).publish(_event())
        with pytest.raises(ServiceUnavailable):
            conn.client  # noqa: B018
        assert "new" in repr(conn)
        await conn.connect()
        await conn.connect()  # idempotent
        await conn.jetstream.delete_stream(conn.settings.stream)
        await conn.jetstream.delete_stream(conn.settings.dead_stream)
        await conn.close()
        await conn.close()
        with pytest.raises(ServiceUnavailable, match="closed"):
            await conn.connect()
        with pytest.raises(ServiceUnavailable):
            await conn.health_check()
        never = NatsConnection.from_config(_config(nats_url, "NEVER"))
        await never.close()

    async def test_no_jetstream_means_unavailable(self) -> None:
        """A server without JetStream: connect raises ServiceUnavailable (streams)."""
        with nats_server(jetstream=False) as server:
            conn = NatsConnection.from_config(_config(server.url, "NOJS"))
            with pytest.raises(ServiceUnavailable, match="stream"):
                await conn.connect()
            assert not conn.connected

    async def test_reconnect_is_logged_and_health_follows(
        self, own_server: NatsServer, logger: RecordingLogger
    ) -> None:
        """Server down: health fails, disconnect logged; server back: reconnected logged,
        health ok, publishing works again."""
        conn = NatsConnection.from_config(
            _config(own_server.url, "RECON", EVENTS_STORAGE="file", NATS_RECONNECT_WAIT_S="0.05"),
            logger=logger,
        )
        await conn.connect()
        await conn.health_check()
        await asyncio.to_thread(own_server.stop)
        await wait_until(lambda: not conn.connected, what="disconnect noticed")
        with pytest.raises(ServiceUnavailable, match="disconnected"):
            await conn.health_check()
        await asyncio.to_thread(own_server.start)
        await wait_until(lambda: conn.connected, timeout=10, what="reconnected")
        # nats-py marks the client connected before it runs the reconnected callback.
        await wait_until(
            lambda: bool(logger.find("nats reconnected", level="info")), what="reconnect logged"
        )
        logger.assert_logged("nats disconnected; reconnecting", level="warning")
        ack = await NatsPublisher(conn).publish(_event())
        assert ack.sequence == 1
        await conn.health_check()
        await conn.close()


class TestStreams:
    """connect ensures both streams; existing ones are left as they are."""

    async def test_streams_are_created_or_left_alone(self, nats_url: str) -> None:
        """An existing stream with another duplicate window is kept as it is on connect;
        the missing dead-letter stream is created."""
        name = f"ALIGN{next(_names)}"
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name=name, subjects=[f"{name.lower()}.>"], duplicate_window=5)
        conn = NatsConnection.from_config(
            _config(nats_url, name, EVENTS_DUPLICATE_WINDOW_S="30", EVENTS_STORAGE="file")
        )
        await conn.connect()
        info = await js.stream_info(name)
        dead = await js.stream_info(f"{name}_DEAD")
        assert info.config.duplicate_window == 5
        assert dead.config.duplicate_window == 30
        assert dead.config.subjects == [f"{name.lower()}-dead.>"]
        await conn.close()
        await js.delete_stream(name)
        await js.delete_stream(f"{name}_DEAD")
        await nc.close()

    async def test_overlapping_subjects_are_refused(self, connection: NatsConnection) -> None:
        """A stream JetStream refuses (subjects overlap) -> ConfigurationError naming it."""
        prefix = connection.settings.prefix
        with pytest.raises(ConfigurationError, match="OVERLAP"):
            await connection.ensure_stream("OVERLAP", [f"{prefix}.>"])


class TestPublishing:
    """PubAck, retries under the same id, errors."""

    async def test_timed_out_publishes_never_duplicate(self, nats_url: str) -> None:
        """Every attempt times out before its ack: ServiceUnavailable after 1 + retries
        attempts, yet the stream holds the event once, and a later publish is a duplicate."""
        conn = NatsConnection.from_config(
            _config(
                nats_url,
                f"TIMEOUT{next(_names)}",
                EVENTS_PUBLISH_TIMEOUT_S="0.000001",
                EVENTS_PUBLISH_RETRIES="2",
            )
        )
        await conn.connect()
        event = _event()
        with pytest.raises(ServiceUnavailable) as caught:
            await NatsPublisher(conn).publish(event)
        assert caught.value.details["attempts"] == 3
        with pytest.raises(ServiceUnavailable, match="1 of 1 events"):
            await NatsPublisher(conn).publish_many([_event(1)])
        js = conn.jetstream
        # A marker on the same connection: once it is acked, every earlier send is stored.
        await js.publish(f"{conn.settings.prefix}.marker", b"m")
        info = await js.stream_info(conn.settings.stream)
        assert info.state.messages == 3
        patient = NatsConnection.from_config(_config(nats_url, conn.settings.stream))
        await patient.connect()
        again = await NatsPublisher(patient).publish(event)
        assert again.duplicate is True
        await js.delete_stream(conn.settings.stream)
        await js.delete_stream(conn.settings.dead_stream)
        await patient.close()
        await conn.close()

    async def test_lost_stream_is_recreated_by_publish(self, connection: NatsConnection) -> None:
        """With its stream deleted, publish gets no responders, re-ensures the streams
        and succeeds on the retry."""
        await connection.jetstream.delete_stream(connection.settings.stream)
        ack = await NatsPublisher(connection).publish(_event())
        assert ack.sequence == 1

    async def test_publish_many_beyond_the_window(self, nats_url: str) -> None:
        """A batch larger than EVENTS_PUBLISH_WINDOW is acked in order."""
        conn = NatsConnection.from_config(
            _config(nats_url, f"WIN{next(_names)}", EVENTS_PUBLISH_WINDOW="7")
        )
        await conn.connect()
        acks = await NatsPublisher(conn).publish_many([_event(i) for i in range(50)])
        assert [a.sequence for a in acks] == list(range(1, 51))
        await conn.jetstream.delete_stream(conn.settings.stream)
        await conn.jetstream.delete_stream(conn.settings.dead_stream)
        await conn.close()

    async def test_too_large_is_a_bad_request(self, connection: NatsConnection) -> None:
        """An event above the server's max payload is a BadRequest, not retried."""
        with pytest.raises(BadRequest, match="max payload"):
            await NatsPublisher(connection).publish(_event(big="x" * 1_100_000))
        with pytest.raises(BadRequest, match="max payload"):
            await NatsPublisher(connection).publish_many([_event(big="x" * 1_100_000)])

    async def test_publish_takes_events(self, connection: NatsConnection) -> None:
        """Anything but an Event is a TypeError."""
        with pytest.raises(TypeError):
            await NatsPublisher(connection).publish("x")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await NatsPublisher(connection).publish_many(["x"])  # type: ignore[list-item]

    async def test_server_down_exhausts_the_retries(self, own_server: NatsServer) -> None:
        """While the server is down, publish and publish_many end in ServiceUnavailable
        after their retries; once it is back, publishing works."""
        conn = NatsConnection.from_config(
            _config(
                own_server.url,
                "DOWN",
                EVENTS_STORAGE="file",
                EVENTS_PUBLISH_TIMEOUT_S="0.2",
                EVENTS_PUBLISH_RETRIES="1",
                NATS_RECONNECT_WAIT_S="0.05",
            )
        )
        await conn.connect()
        await asyncio.to_thread(own_server.stop)
        await wait_until(lambda: not conn.connected, what="disconnected")
        publisher = NatsPublisher(conn)
        with pytest.raises(ServiceUnavailable) as caught:
            await publisher.publish(_event())
        assert caught.value.details["attempts"] == 2
        with pytest.raises(ServiceUnavailable, match="2 of 2 events"):
            await publisher.publish_many([_event(1), _event(2)])
        await asyncio.to_thread(own_server.start)
        await wait_until(lambda: conn.connected, timeout=10, what="reconnected")
        assert (await publisher.publish(_event(3))).duplicate is False
        await conn.close()
        with pytest.raises(ServiceUnavailable):
            await publisher.publish(_event(4))


class TestConsuming:
    """Consumers re-created, ack_wait aligned, dead letters on the wire."""

    async def test_lost_consumer_is_recreated(
        self, connection: NatsConnection, logger: RecordingLogger
    ) -> None:
        """Deleting the durable under a running subscription: it is re-created and
        events published afterwards are handled."""
        seen: list[int] = []

        async def handler(event: Event) -> None:
            seen.append(event.data["n"])

        sub = await NatsSubscriber(connection).subscribe("orders.>", handler, durable="lost")
        await NatsPublisher(connection).publish(_event(1))
        await wait_until(lambda: seen == [1], what="first event")
        await connection.jetstream.delete_consumer(
            connection.settings.stream, connection.settings.consumer_name("lost")
        )
        await wait_until(
            lambda: bool(logger.find("consumer lost; re-creating it")), what="re-created"
        )
        await NatsPublisher(connection).publish(_event(2))
        await wait_until(lambda: 2 in seen, what="event after re-creation")
        await sub.stop()

    async def test_lost_stream_is_recreated_by_the_subscription(
        self, connection: NatsConnection
    ) -> None:
        """Deleting the stream under a subscription: stream and consumer come back."""
        seen: list[int] = []

        async def handler(event: Event) -> None:
            seen.append(event.data["n"])

        sub = await NatsSubscriber(connection).subscribe("orders.>", handler, durable="gone")
        await connection.jetstream.delete_stream(connection.settings.stream)

        async def consumer_back() -> bool:
            try:
                await connection.jetstream.consumer_info(
                    connection.settings.stream, connection.settings.consumer_name("gone")
                )
            except Exception:
                return False
            return True

        await wait_until_async(consumer_back, timeout=10, what="consumer re-created")
        await NatsPublisher(connection).publish(_event(5))
        await wait_until(lambda: seen == [5], what="event after the stream came back")
        await sub.stop()

    async def test_ack_wait_of_an_existing_durable_is_aligned(
        self, connection: NatsConnection
    ) -> None:
        """Subscribing an existing durable with another ack_wait updates the consumer."""

        async def handler(event: Event) -> None:
            return None

        subscriber = NatsSubscriber(connection)
        sub = await subscriber.subscribe("orders.>", handler, durable="aw", ack_wait=30)
        await sub.stop()
        sub = await subscriber.subscribe("orders.>", handler, durable="aw", ack_wait=7)
        info = await connection.jetstream.consumer_info(
            connection.settings.stream, connection.settings.consumer_name("aw")
        )
        assert info.config.ack_wait == 7
        assert info.config.max_deliver == -1
        await sub.stop()

    async def test_dead_letter_message_on_the_wire(self, connection: NatsConnection) -> None:
        """The dead-letter stream holds the original payload and headers plus headers
        naming subject, durable, reason and attempts, on dead.<durable>.<subject>."""

        async def reject(event: Event) -> None:
            raise Reject("bad order")

        subscriber = NatsSubscriber(connection)
        assert await subscriber.dead_letters() == []
        sub = await subscriber.subscribe("orders.>", reject, durable="wire")
        event = _event(1)
        await NatsPublisher(connection).publish(event)
        s = connection.settings
        nc = await nats.connect(s.url)
        js = nc.jetstream()
        psub = await js.pull_subscribe(f"{s.dead_prefix}.>", stream=s.dead_stream)
        [msg] = await psub.fetch(1, timeout=5)
        await sub.stop()
        await nc.close()
        assert msg.subject == f"{s.dead_prefix}.wire.orders.placed"
        assert msg.data == b'{"n":1}'
        headers = msg.headers or {}
        assert headers["ce-id"] == event.id
        assert headers[H_DEAD_SUBJECT] == "orders.placed"
        assert headers[H_DEAD_DURABLE] == "wire"
        assert headers[H_DEAD_REASON] == "rejected"
        assert headers[H_DEAD_ATTEMPTS] == "1"
        [letter] = await subscriber.dead_letters()
        assert letter.event == event
        assert letter.headers["Nats-Msg-Id"] == event.id

    async def test_subscribe_when_jetstream_is_gone(self, own_server: NatsServer) -> None:
        """subscribe while the server is down -> ServiceUnavailable naming the durable."""
        conn = NatsConnection.from_config(
            _config(
                own_server.url,
                "SUBDOWN",
                NATS_RECONNECT_WAIT_S="0.05",
                EVENTS_API_TIMEOUT_S="0.3",
            )
        )
        await conn.connect()
        await asyncio.to_thread(own_server.stop)
        await wait_until(lambda: not conn.connected, what="disconnected")

        async def handler(event: Event) -> None:
            return None

        with pytest.raises(ServiceUnavailable, match="durable"):
            await NatsSubscriber(conn).subscribe("orders.>", handler, durable="x")
        with pytest.raises(ServiceUnavailable):
            await NatsSubscriber(conn).dead_letters()
        await conn.close(timeout=0.5)

    async def test_consuming_survives_a_server_restart(self, own_server: NatsServer) -> None:
        """After the server restarts (same store), the subscription pulls again and
        handles events published after the restart."""
        conn = NatsConnection.from_config(
            _config(
                own_server.url,
                "RESTART",
                EVENTS_STORAGE="file",
                NATS_RECONNECT_WAIT_S="0.05",
                EVENTS_PULL_EXPIRES_S="0.5",
            )
        )
        await conn.connect()
        seen: list[tuple[int, str | None]] = []

        async def handler(event: Event) -> None:
            seen.append((event.data["n"], current_context().get("request_id")))

        sub = await NatsSubscriber(conn).subscribe("orders.>", handler, durable="rs")
        await NatsPublisher(conn).publish(_event(1))
        await wait_until(lambda: len(seen) == 1, what="before restart")
        await asyncio.to_thread(own_server.restart)
        await wait_until(lambda: conn.connected, timeout=10, what="reconnected")
        await NatsPublisher(conn).publish(_event(2))
        await wait_until(lambda: len(seen) == 2, timeout=10, what="after restart")
        await sub.stop()
        await conn.close()


class TestCloudEventsInterop:
    """Through a real server: the cloudevents SDK reads what we publish; what the SDK
    builds, published with raw nats-py, reaches our subscriber."""

    async def test_sdk_reads_our_message(self, connection: NatsConnection) -> None:
        """A raw nats-py consumer hands our message to the SDK, which reads the event."""
        event = _event(7, text="ü")
        await NatsPublisher(connection).publish(event)
        s = connection.settings
        nc = await nats.connect(s.url)
        psub = await nc.jetstream().pull_subscribe(f"{s.prefix}.>", stream=s.stream)
        [msg] = await psub.fetch(1, timeout=5)
        await nc.close()
        ce = from_binary_event(HTTPMessage(headers=dict(msg.headers or {}), body=msg.data))
        assert ce.get_id() == event.id
        assert ce.get_type() == event.type
        assert ce.get_source() == event.source
        assert ce.get_time() == event.timestamp
        assert ce.get_extension("organizationid") == "org"
        assert ce.get_data() == {"n": 7, "text": "ü"}

    async def test_our_subscriber_reads_the_sdk_message(self, connection: NatsConnection) -> None:
        """A CloudEvent built by the SDK, published with raw nats-py, is handled by us
        with its attributes, data and request id."""
        received: list[tuple[Event, dict[str, Any]]] = []

        async def handler(event: Event) -> None:
            received.append((event, dict(current_context())))

        sub = await NatsSubscriber(connection).subscribe("orders.>", handler, durable="sdk")
        ce = CloudEvent(
            attributes={
                "type": "com.example.order.placed",
                "source": "/shop/eu",
                "organizationid": "org-sdk",
                "requestid": "req sdk",
            },
            data={"total": 99, "items": ["a", "b"]},
        )
        message = to_binary_event(ce)
        nc = await nats.connect(connection.settings.url)
        await nc.jetstream().publish(
            f"{connection.settings.prefix}.orders.sdk", message.body, headers=message.headers
        )
        await nc.close()
        await wait_until(lambda: len(received) == 1, what="SDK event handled")
        await sub.stop()
        [(event, context)] = received
        assert event.id == ce.get_id()
        assert event.type == "com.example.order.placed"
        assert event.source == "/shop/eu"
        assert event.organization_id == "org-sdk"
        assert event.timestamp == ce.get_time()
        assert event.data == {"total": 99, "items": ["a", "b"]}
        assert context["request_id"] == "req sdk"
