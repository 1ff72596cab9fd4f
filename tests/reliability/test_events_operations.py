"""Events under the operations of an ordinary week, on a real NATS server: rolling
restarts of a consumer, handlers that fail in every way, foreign messages on a pull
inbox, a subscription that cannot go on, and an installed nats-py that does not match
the direct lane.

Each test prints its figures (run with ``-s``): handled, dead-lettered, lost, duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from nats.js.api import DiscardPolicy

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from adapters.nats_events import _internals as internals
from adapters.nats_events import connection as connection_module
from adapters.nats_events.attempts import bucket_name
from adapters.nats_events.dead_letters import H_DEAD_CONSUMER
from domain_errors import BadRequest, ServiceUnavailable
from ports.context import bind_context, current_context
from ports.events import DeadLetter, Event, Reject
from testing.fakes import RecordingLogger
from testing.servers import nats_server
from tests.helpers import wait_until, wait_until_async

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

_names = iter(range(1_000_000))


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with nats_server() as server:
        yield server.url


@contextlib.asynccontextmanager
async def _connected(
    url: str, name: str, logger: RecordingLogger | None = None, **extra: str
) -> AsyncIterator[NatsConnection]:
    connection = NatsConnection.from_config(
        InMemoryConfig(
            {
                "NATS_URL": url,
                "SERVICE_NAME": "ops",
                "EVENTS_STREAM": name,
                "EVENTS_PREFIX": name.lower(),
                "EVENTS_STORAGE": "memory",
                "EVENTS_PUBLISH_TIMEOUT_S": "2",
                "EVENTS_PULL_EXPIRES_S": "1",
                **extra,
            }
        ),
        logger=logger if logger is not None else RecordingLogger(),
    )
    await connection.connect()
    try:
        yield connection
    finally:
        await connection.close(timeout=2)


def _name(what: str) -> str:
    return f"OPS_{what}_{next(_names)}"


def _events(n: int, type_: str = "ops.tick") -> list[Event]:
    return [Event(type=type_, source="ops", organization_id="org", data={"n": i}) for i in range(n)]


async def test_rolling_restarts_dead_letter_nothing(server_url: str) -> None:
    """200 events, a consumer with default settings restarted 6 times 0.3 s apart, then
    drained: 200 handled, 0 dead letters, every first handling at attempt 1."""
    async with _connected(server_url, _name("ROLLING")) as connection:
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        events = _events(200)
        await publisher.publish_many(events)
        first_attempt: dict[str, int] = {}
        handled: Counter[str] = Counter()

        async def handler(event: Event) -> None:
            first_attempt.setdefault(event.id, current_context()["attempt"])
            await asyncio.sleep(0.005)  # work that takes time, so restarts cut into it
            handled[event.id] += 1

        sub = await subscriber.subscribe("ops.>", handler, durable="projection")
        for _ in range(6):
            await asyncio.sleep(0.3)  # the deploy's pace, not a synchronisation
            await sub.stop(timeout=5)
            sub = await subscriber.subscribe("ops.>", handler, durable="projection")
        await wait_until(lambda: len(handled) == 200, timeout=30, what="all handled")
        await sub.stop()
        dead = await subscriber.dead_letters()
    duplicates = sum(count - 1 for count in handled.values())
    print(
        f"\nrolling restarts: handled {len(handled)}, dead-lettered {len(dead)}, "
        f"lost {200 - len(handled)}, duplicates {duplicates}"
    )
    assert set(handled) == {e.id for e in events}
    assert dead == []
    assert set(first_attempt.values()) == {1}


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")


class _Boom(BaseException):
    """A BaseException that is not the worker's own cancellation."""


async def test_handlers_failing_in_every_way_never_kill_a_worker(server_url: str) -> None:
    """A handler that raises its own CancelledError, an exception whose str() raises,
    or a BaseException subclass: each is a failed attempt, redelivered and then
    handled; the subscription keeps running and handles later events."""
    logger = RecordingLogger()
    async with _connected(server_url, _name("BROKEN"), logger) as connection:
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        failures = {
            "cancelled": asyncio.CancelledError(),
            "unprintable": _Unprintable(),
            "base": _Boom(),
        }
        attempts: dict[str, list[int]] = {kind: [] for kind in failures}
        later: list[str] = []

        async def handler(event: Event) -> None:
            kind = event.data.get("kind")
            if kind is None:
                later.append(event.id)
                return
            attempts[kind].append(current_context()["attempt"])
            if len(attempts[kind]) == 1:
                raise failures[kind]

        sub = await subscriber.subscribe(
            "ops.>", handler, durable="broken", backoff=(0.05,), concurrency=1
        )
        await publisher.publish_many(
            [
                Event(type="ops.x", source="t", organization_id="o", data={"kind": k})
                for k in failures
            ]
        )
        await wait_until(
            lambda: all(len(a) == 2 for a in attempts.values()), timeout=15, what="retried"
        )
        await publisher.publish_many(_events(3))
        await wait_until(lambda: len(later) == 3, timeout=15, what="later events handled")
        assert sub.running
        await sub.stop()
        dead = await subscriber.dead_letters()
    assert attempts == {kind: [1, 2] for kind in failures}
    assert dead == []
    retries = logger.messages(level="warning")
    assert retries.count("event handler failed; will retry") == 3


async def test_foreign_messages_on_the_pull_inbox_are_ignored(server_url: str) -> None:
    """Messages another client publishes to a subscription's pull inbox (no reply, a
    reply that is not a JetStream ack subject, a half ack subject) are logged and
    ignored; the subscription keeps handling events."""
    logger = RecordingLogger()
    async with _connected(server_url, _name("FOREIGN"), logger) as connection:
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        handled: list[str] = []

        async def handler(event: Event) -> None:
            handled.append(event.id)

        sub = await subscriber.subscribe("ops.>", handler, durable="foreign")
        inbox = sub._inbox
        hostile = connection.client  # any client on the network that learns the inbox
        await hostile.publish(inbox, b"hello")
        await hostile.publish(inbox, b"{}", reply="reply.to.me")
        await hostile.publish(inbox, b"{}", reply="$JS.ACK.x.y")
        await hostile.publish(inbox, b"{}", headers={"Status": "no"})
        await hostile.flush()
        events = _events(5)
        await publisher.publish_many(events)
        await wait_until(lambda: len(handled) == 5, timeout=15, what="events handled")
        assert sub.running
        await sub.stop()
    assert handled == [e.id for e in events]
    logger.assert_logged("foreign message on the pull inbox ignored", level="warning")


async def test_a_subscription_that_cannot_go_on_says_so(server_url: str) -> None:
    """When a part of a subscription dies, ``running`` turns false, the reason is
    logged at error and the connection's health check reports it."""
    logger = RecordingLogger()
    async with _connected(server_url, _name("DEAD")) as connection:
        connection._logger = logger
        subscriber = NatsSubscriber(connection)

        async def handler(event: Event) -> None:
            return None

        sub = await subscriber.subscribe("ops.>", handler, durable="dies", concurrency=2)
        sub._logger = logger
        await connection.health_check()
        sub._workers[0].cancel()  # what an unexpected crash of our own code looks like
        await wait_until(lambda: not sub.running, timeout=5, what="running turned false")
        with pytest.raises(ServiceUnavailable, match="dies"):
            await connection.health_check()
        await sub.stop()
    logger.assert_logged("subscription cannot go on", level="error")


async def test_handler_context_comes_from_the_event_alone(server_url: str) -> None:
    """A request_id bound around ``subscribe`` never reaches a handler of an event
    that carries none."""
    async with _connected(server_url, _name("CONTEXT")) as connection:
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        seen: list[object] = []

        async def handler(event: Event) -> None:
            seen.append(current_context().get("request_id"))

        with bind_context(request_id="the-subscriber's-own"):
            sub = await subscriber.subscribe("ops.>", handler, durable="context")
        await publisher.publish(_events(1)[0])
        with bind_context(request_id="req-1"):
            await publisher.publish(_events(1)[0])
        await wait_until(lambda: len(seen) == 2, timeout=10, what="handled")
        await sub.stop()
    assert seen == [None, "req-1"]


async def test_a_mismatched_nats_py_falls_back_to_its_public_api(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the installed nats-py does not match the direct lane, the connection says
    so once and publishes and consumes through nats-py's public API."""
    monkeypatch.setattr(connection_module, "lanes_supported", lambda: False)
    logger = RecordingLogger()
    async with _connected(server_url, _name("FALLBACK"), logger) as connection:
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        handled: list[tuple[str, object]] = []

        async def handler(event: Event) -> None:
            handled.append((event.id, current_context().get("request_id")))
            if len(handled) == 1:
                raise RuntimeError("once")

        assert not isinstance(connection.client, internals.Client)
        sub = await subscriber.subscribe("ops.>", handler, durable="fallback", backoff=(0.05,))
        event = _events(1)[0]
        with bind_context(request_id="r-1"):
            await publisher.publish(event)
        await wait_until(lambda: len(handled) == 2, timeout=10, what="retried and handled")
        await sub.stop()
    assert handled == [(event.id, "r-1"), (event.id, "r-1")]
    logger.assert_logged(
        "installed nats-py does not match the direct lane; using its public API", level="warning"
    )


async def test_same_group_name_in_two_services_keeps_both_dead_letters(
    server_url: str,
) -> None:
    """Two services on one stream, both with a group named ``projection``, both reject
    the same event: each service's dead letter is stored."""
    name = _name("SHAREDDEAD")
    async with (
        _connected(server_url, name, SERVICE_NAME="billing") as billing,
        _connected(server_url, name, SERVICE_NAME="shipping") as shipping,
    ):
        rejected: list[str] = []

        def rejecting(service: str) -> Callable[[Event], Awaitable[None]]:
            async def handler(event: Event) -> None:
                rejected.append(service)
                raise Reject(f"{service} refuses")

            return handler

        subs = [
            await NatsSubscriber(billing).subscribe(
                "ops.>", rejecting("billing"), durable="projection"
            ),
            await NatsSubscriber(shipping).subscribe(
                "ops.>", rejecting("shipping"), durable="projection"
            ),
        ]
        await NatsPublisher(billing).publish(_events(1)[0])
        reader = NatsSubscriber(billing)
        dead: list[DeadLetter] = []

        async def both_stored() -> bool:
            dead[:] = await reader.dead_letters()
            return len(dead) == 2

        await wait_until_async(both_stored, timeout=10, what="two dead letters")
        for sub in subs:
            await sub.stop()
    assert sorted(rejected) == ["billing", "shipping"]
    assert sorted(d.error or "" for d in dead) == [
        "billing refuses",
        "shipping refuses",
    ]
    consumers = sorted(d.headers[H_DEAD_CONSUMER] for d in dead)
    assert consumers == ["billing-projection", "shipping-projection"]


async def test_a_lost_failure_record_bucket_still_bounds_attempts(server_url: str) -> None:
    """The attempts bucket deleted while a failing event is retried (an operator, a
    memory-storage restart) is created again: max_deliver still bounds the runs."""
    name = _name("NOBUCKET")
    async with _connected(server_url, name) as connection:
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        runs: list[int] = []

        async def handler(event: Event) -> None:
            runs.append(current_context()["attempt"])
            if len(runs) == 1:
                await connection.jetstream.delete_key_value(bucket_name(name))
            raise RuntimeError("always fails")

        sub = await subscriber.subscribe(
            "ops.>", handler, durable="nobucket", max_deliver=3, backoff=(0.05,)
        )
        await publisher.publish(_events(1)[0])
        dead: list[DeadLetter] = []

        async def stored() -> bool:
            dead[:] = await subscriber.dead_letters()
            return len(dead) == 1

        await wait_until_async(stored, timeout=10, what="dead letter")
        await sub.stop()
    assert runs == [1, 2, 3]


async def test_a_dead_letter_not_stored_never_runs_the_handler_again(server_url: str) -> None:
    """A rejected event whose dead letter the dead-letter stream refuses (full, an
    operator's limit) is not handled again; once the stream takes it, it is stored."""
    name = _name("DEADFULL")
    async with _connected(server_url, name) as connection:
        js = connection.jetstream
        dead_stream = connection.settings.dead_stream
        info = await js.stream_info(dead_stream)
        info.config.max_msgs = 1
        info.config.discard = DiscardPolicy.NEW
        await js.update_stream(info.config)
        await js.publish(f"{connection.settings.dead_prefix}.filler.x", b"")
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        runs: list[int] = []

        async def handler(event: Event) -> None:
            runs.append(current_context()["attempt"])
            raise Reject("never")

        sub = await subscriber.subscribe("ops.>", handler, durable="deadfull", backoff=(0.05,))
        await publisher.publish(_events(1)[0])
        await wait_until(lambda: bool(runs), timeout=10, what="first run")
        refused = connection._logger
        assert isinstance(refused, RecordingLogger)
        await wait_until(
            lambda: len(refused.find("dead letter not stored; the event will come back")) >= 2,
            timeout=30,
            what="two refused dead letters",
        )
        await js.purge_stream(dead_stream)
        dead: list[DeadLetter] = []

        async def stored() -> bool:
            dead[:] = await subscriber.dead_letters()
            return len(dead) == 1

        await wait_until_async(stored, timeout=30, what="dead letter stored")
        await sub.stop()
    assert runs == [1]
    assert dead[0].reason == "rejected"


async def test_forged_statuses_on_the_inbox_do_not_widen_the_prefetch(server_url: str) -> None:
    """Request-timeout statuses forged by another client on a subscription's inbox
    leave it holding at most 2 x concurrency events it has not started."""
    async with _connected(server_url, _name("FORGED")) as connection:
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        release = asyncio.Event()
        handled: list[str] = []

        async def slow(event: Event) -> None:
            await release.wait()
            handled.append(event.id)

        sub = await subscriber.subscribe("ops.>", slow, durable="forged", concurrency=1)
        for _ in range(50):
            await connection.client.publish(sub._inbox, b"", headers={"Status": "408"})
        await connection.client.flush()
        await publisher.publish_many(_events(30))
        await wait_until(lambda: len(sub._tracked) >= 1, timeout=10, what="first delivery")
        info = await connection.jetstream.consumer_info(connection.settings.stream, sub.consumer)
        held = info.num_ack_pending
        release.set()
        await wait_until(lambda: len(handled) == 30, timeout=20, what="all handled")
        await sub.stop()
    assert held <= 3  # one in the handler, at most two waiting


async def test_an_operators_message_size_limit_is_kept(server_url: str) -> None:
    """A stream an operator limited with max_msg_size: a larger event is a BadRequest
    before sending, and a dead letter is trimmed to fit the dead-letter stream's limit."""
    name = _name("MSGSIZE")
    async with _connected(server_url, name) as first:
        js = first.jetstream
        for stream in (first.settings.stream, first.settings.dead_stream):
            info = await js.stream_info(stream)
            info.config.max_msg_size = 4096
            await js.update_stream(info.config)
    async with _connected(server_url, name) as connection:
        publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
        big = Event(type="ops.big", source="ops", organization_id="org", data={"x": "y" * 5000})
        with pytest.raises(BadRequest, match="4096"):
            await publisher.publish(big)

        async def handler(event: Event) -> None:
            raise Reject("z" * 6000)

        sub = await subscriber.subscribe("ops.>", handler, durable="msgsize")
        fits = Event(type="ops.fits", source="ops", organization_id="org", data={"x": "y" * 3000})
        await publisher.publish(fits)
        dead: list[DeadLetter] = []

        async def stored() -> bool:
            dead[:] = await subscriber.dead_letters()
            return len(dead) == 1

        await wait_until_async(stored, timeout=10, what="dead letter")
        await sub.stop()
    assert dead[0].event is not None
    assert dead[0].event.id == fits.id


async def test_dead_letters_of_other_prefixes_do_not_stall_reading(server_url: str) -> None:
    """A dead-letter stream that also holds letters under another prefix (an older
    default, another service) returns ours at once, without waiting for the others,
    and nothing when none is ours."""
    name = _name("OLDDEAD")
    async with _connected(server_url, name, EVENTS_DEAD_PREFIX=f"dead.{name.lower()}") as c:
        js = c.jetstream
        info = await js.stream_info(c.settings.dead_stream)
        info.config.subjects = [*(info.config.subjects or []), "olddead.>"]
        await js.update_stream(info.config)
        await js.publish("olddead.projection.x", b"old")
        subscriber = NatsSubscriber(c)
        assert await subscriber.dead_letters(timeout=0.5) == []
        await js.publish(f"{c.settings.dead_prefix}.projection.x", b"ours")
        await js.publish("olddead.projection.y", b"old")
        began = asyncio.get_running_loop().time()
        letters = await subscriber.dead_letters(timeout=10)
        took = asyncio.get_running_loop().time() - began
    assert [letter.payload for letter in letters] == [b"ours"]
    assert took < 5  # far below the read timeout: nothing waited for the others
