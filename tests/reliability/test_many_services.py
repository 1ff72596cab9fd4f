"""Many services on one NATS server: their own streams side by side, shared streams
never modified by a connecting service, clear errors when a stream cannot carry our
subjects, concurrent creation of one stream, retention limits of new streams.

One server for the module; every test uses stream names of its own.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from domain_errors import ConfigurationError
from ports.events import Event
from testing.fakes import RecordingLogger
from testing.servers import NatsServer, nats_server
from tests.helpers import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SEVEN_DAYS = 7 * 24 * 3600.0


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    """One JetStream server for every test of the module."""
    with nats_server() as started:
        yield started


@pytest.fixture
async def js(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """A plain nats-py JetStream context, as an operator would use."""
    nc = await nats.connect(server.url)
    yield nc.jetstream()
    await nc.close()


def _config(url: str, service: str, **values: str) -> InMemoryConfig:
    return InMemoryConfig(
        {
            "NATS_URL": url,
            "SERVICE_NAME": service,
            "EVENTS_STORAGE": "memory",
            "EVENTS_PULL_EXPIRES_S": "1",
            **values,
        }
    )


def _connection(
    url: str, service: str, *, logger: RecordingLogger | None = None, **values: str
) -> NatsConnection:
    return NatsConnection.from_config(
        _config(url, service, **values), logger=logger if logger is not None else RecordingLogger()
    )


def _events(service: str, n: int) -> list[Event]:
    return [
        Event(type="tick.made", source=service, organization_id="org", data={"n": i})
        for i in range(n)
    ]


async def _config_of(js: JetStreamContext, stream: str) -> dict[str, Any]:
    return (await js.stream_info(stream)).config.as_dict()


class TestServicesSideBySide:
    """Services with their own streams and services sharing one, at the same time."""

    async def test_five_services_connect_publish_and_consume_at_once(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """Three services with their own streams (default dead prefix) and two sharing a
        stream connect, publish and consume concurrently; each gets its events."""
        own = {
            "alpha": _connection(server.url, "alpha"),  # all defaults: EVENTS, events
            "beta": _connection(server.url, "beta", EVENTS_STREAM="BETA", EVENTS_PREFIX="beta"),
            "gamma": _connection(
                server.url, "gamma", EVENTS_STREAM="GAMMA", EVENTS_PREFIX="gamma.v1"
            ),
        }
        shared = {
            name: _connection(server.url, name, EVENTS_STREAM="SHARED", EVENTS_PREFIX="shared")
            for name in ("orders", "billing")
        }
        everyone = {**own, **shared}
        await asyncio.gather(*(conn.connect() for conn in everyone.values()))
        handled: dict[str, Counter[str]] = {name: Counter() for name in everyone}
        subscriptions = []
        for name, conn in everyone.items():

            async def handler(event: Event, seen: Counter[str] = handled[name]) -> None:
                seen[event.id] += 1

            subscriptions.append(
                await NatsSubscriber(conn).subscribe(
                    "tick.>", handler, durable=f"{name}-audit", concurrency=4
                )
            )
        published = dict(
            zip(
                everyone,
                await asyncio.gather(
                    *(
                        NatsPublisher(conn).publish_many(_events(name, 50))
                        for name, conn in everyone.items()
                    )
                ),
                strict=True,
            )
        )
        assert all(len(acks) == 50 for acks in published.values())
        shared_total = 100
        await wait_until(
            lambda: (
                all(len(handled[n]) == 50 for n in own)
                and all(len(handled[n]) == shared_total for n in shared)
            ),
            timeout=10,
            what="every service handled its stream's events",
        )
        await asyncio.gather(*(sub.stop() for sub in subscriptions))
        for name in own:
            assert set(handled[name].values()) == {1}, name
        for stream, prefix in (
            ("EVENTS", "events"),
            ("BETA", "beta"),
            ("GAMMA", "gamma.v1"),
            ("SHARED", "shared"),
        ):
            assert (await js.stream_info(stream)).state.messages == (
                shared_total if stream == "SHARED" else 50
            )
            dead = await js.stream_info(f"{stream}_DEAD")
            assert dead.config.subjects == [f"dead.{prefix}.>"]
        await asyncio.gather(*(conn.close() for conn in everyone.values()))

    async def test_same_named_groups_in_two_services_each_get_every_event(
        self, server: NatsServer
    ) -> None:
        """Two services on one stream both call their group "projection": each service
        handles every event (their consumers are <SERVICE_NAME>-projection)."""
        conns = {
            name: _connection(server.url, name, EVENTS_STREAM="PROJ", EVENTS_PREFIX="proj")
            for name in ("reports", "search")
        }
        await asyncio.gather(*(conn.connect() for conn in conns.values()))
        handled: dict[str, set[str]] = {name: set() for name in conns}
        subscriptions = []
        for name, conn in conns.items():

            async def handler(event: Event, seen: set[str] = handled[name]) -> None:
                seen.add(event.id)

            subscriptions.append(
                await NatsSubscriber(conn).subscribe("tick.>", handler, durable="projection")
            )
        events = _events("writer", 40)
        await NatsPublisher(conns["reports"]).publish_many(events)
        ids = {e.id for e in events}
        try:
            await wait_until(
                lambda: set().union(*handled.values()) == ids, timeout=10, what="all handled"
            )
            if handled["reports"] != ids or handled["search"] != ids:
                # Give a second consumer the time to catch up, if there is one.
                await wait_until(
                    lambda: handled["reports"] == ids and handled["search"] == ids,
                    timeout=3,
                    what="each service handled every event",
                )
        finally:
            await asyncio.gather(*(sub.stop() for sub in subscriptions))
            await asyncio.gather(*(conn.close() for conn in conns.values()))
        assert handled["reports"] == ids
        assert handled["search"] == ids


class TestStreamsAreNeverModified:
    """A service connecting to a stream that exists leaves it exactly as it is."""

    async def test_configs_unchanged_by_other_settings_and_reconnects(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """Stream configs are byte-for-byte unchanged after a service with another
        duplicate window, replicas, storage and max age connects and reconnects."""
        first = _connection(server.url, "first", EVENTS_STREAM="KEEP", EVENTS_PREFIX="keep")
        await first.connect()
        before = {s: await _config_of(js, s) for s in ("KEEP", "KEEP_DEAD")}
        for _ in range(2):
            other = _connection(
                server.url,
                "other",
                EVENTS_STREAM="KEEP",
                EVENTS_PREFIX="keep",
                EVENTS_DUPLICATE_WINDOW_S="5",
                EVENTS_REPLICAS="3",
                EVENTS_STORAGE="file",
                EVENTS_MAX_AGE_S="60",
                EVENTS_MAX_BYTES="1000000",
                EVENTS_DEAD_MAX_AGE_S="3600",
            )
            await other.connect()
            await other.ensure_streams()
            await other.close()
        await first.close()
        after = {s: await _config_of(js, s) for s in ("KEEP", "KEEP_DEAD")}
        assert after == before

    async def test_operator_limits_survive_a_connect(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """Limits set by hand (max_msgs, max_age, a wider subject list) survive a
        service's connect."""
        first = _connection(server.url, "ops", EVENTS_STREAM="TUNED", EVENTS_PREFIX="tuned")
        await first.connect()
        await first.close()
        info = await js.stream_info("TUNED")
        tuned = info.config
        tuned.max_msgs = 1000
        tuned.max_age = 3600.0
        tuned.subjects = ["tuned.>", "legacy.>"]
        await js.update_stream(tuned)
        before = await _config_of(js, "TUNED")
        conn = _connection(server.url, "svc", EVENTS_STREAM="TUNED", EVENTS_PREFIX="tuned")
        await conn.connect()
        await NatsPublisher(conn).publish(_events("svc", 1)[0])
        await conn.close()
        after = await _config_of(js, "TUNED")
        assert after == before
        assert (after["max_msgs"], after["subjects"]) == (1000, ["tuned.>", "legacy.>"])

    async def test_a_wider_existing_stream_is_accepted(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """A stream capturing more than our subjects (wildcards) is used as it is."""
        await js.add_stream(name="WIDE_ACCEPT", subjects=["accept.*.>"])
        await js.add_stream(name="WIDE_ACCEPT_DEAD", subjects=["dead.accept.>"])
        conn = _connection(server.url, "svc", EVENTS_STREAM="WIDE_ACCEPT", EVENTS_PREFIX="accept.x")
        await conn.connect()
        ack = await NatsPublisher(conn).publish(_events("svc", 1)[0])
        await conn.close()
        assert ack.stream == "WIDE_ACCEPT"
        assert (await js.stream_info("WIDE_ACCEPT")).config.subjects == ["accept.*.>"]


class TestStreamsThatCannotCarryOurSubjects:
    """ConfigurationError at connect, naming the stream; never a retryable error."""

    async def test_existing_stream_without_our_subjects(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """A stream that exists without <prefix>.> -> ConfigurationError naming it and
        the missing subjects; the stream is left as it was."""
        await js.add_stream(name="FOREIGN", subjects=["other.>"])
        before = await _config_of(js, "FOREIGN")
        conn = _connection(server.url, "svc", EVENTS_STREAM="FOREIGN", EVENTS_PREFIX="foreign")
        with pytest.raises(ConfigurationError, match=r"FOREIGN.*foreign\.>") as caught:
            await conn.connect()
        assert caught.value.details["stream"] == "FOREIGN"
        assert await _config_of(js, "FOREIGN") == before
        assert not conn.connected

    async def test_existing_dead_stream_without_our_subjects(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """A dead-letter stream that exists without <dead_prefix>.> -> ConfigurationError
        naming it."""
        await js.add_stream(name="DEADLY_DEAD", subjects=["graveyard.>"])
        conn = _connection(server.url, "svc", EVENTS_STREAM="DEADLY", EVENTS_PREFIX="deadly")
        with pytest.raises(ConfigurationError, match=r"DEADLY_DEAD.*dead\.deadly\.>"):
            await conn.connect()
        assert (await js.stream_info("DEADLY_DEAD")).config.subjects == ["graveyard.>"]

    async def test_overlapping_subjects_at_creation(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """Creating a stream whose subjects overlap another's -> ConfigurationError
        naming both streams."""
        await js.add_stream(name="OUTER", subjects=["outer.>"])
        conn = _connection(server.url, "svc", EVENTS_STREAM="INNER", EVENTS_PREFIX="outer.inner")
        with pytest.raises(ConfigurationError, match=r"INNER.*outer\.inner\.>.*OUTER") as caught:
            await conn.connect()
        assert caught.value.details["overlaps"] == ["OUTER"]

    async def test_ensure_stream_overlap_is_a_configuration_error(self, server: NatsServer) -> None:
        """ensure_stream called directly with another stream's subjects ->
        ConfigurationError naming the stream."""
        conn = _connection(server.url, "svc", EVENTS_STREAM="HOLDER", EVENTS_PREFIX="holder")
        await conn.connect()
        try:
            with pytest.raises(ConfigurationError, match="COPYCAT"):
                await conn.ensure_stream("COPYCAT", ["holder.>"])
        finally:
            await conn.close()


class TestCreatingStreams:
    """Concurrent creation, and the limits a new stream gets."""

    async def test_five_connections_create_one_stream_at_once(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """Five connections (with different max ages) creating the same missing stream
        at once all connect; the stream is created once."""
        logger = RecordingLogger()
        conns = [
            _connection(
                server.url,
                f"svc{i}",
                logger=logger,
                EVENTS_STREAM="RACE",
                EVENTS_PREFIX="race",
                EVENTS_MAX_AGE_S=str(3600 * (i + 1)),
            )
            for i in range(5)
        ]
        await asyncio.gather(*(conn.connect() for conn in conns))
        assert all(conn.connected for conn in conns)
        assert len(logger.find("stream created", stream="RACE")) == 1
        max_age = (await js.stream_info("RACE")).config.max_age
        assert max_age in {3600.0 * (i + 1) for i in range(5)}
        await asyncio.gather(*(conn.close() for conn in conns))

    async def test_new_streams_get_the_retention_limits(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """A new stream keeps events 7 days by default, without a byte limit; its
        dead-letter stream has no age limit."""
        conn = _connection(server.url, "svc", EVENTS_STREAM="FRESH", EVENTS_PREFIX="fresh")
        await conn.connect()
        await conn.close()
        events, dead = (
            (await js.stream_info("FRESH")).config,
            (await js.stream_info("FRESH_DEAD")).config,
        )
        assert (events.max_age, events.max_bytes) == (SEVEN_DAYS, -1)
        assert (dead.max_age, dead.max_bytes) == (0, -1)
        assert dead.subjects == ["dead.fresh.>"]

    async def test_configured_retention_limits(
        self, server: NatsServer, js: JetStreamContext
    ) -> None:
        """EVENTS_MAX_AGE_S, EVENTS_MAX_BYTES and EVENTS_DEAD_MAX_AGE_S shape new streams."""
        conn = _connection(
            server.url,
            "svc",
            EVENTS_STREAM="LIMITED",
            EVENTS_PREFIX="limited",
            EVENTS_MAX_AGE_S="3600",
            EVENTS_MAX_BYTES="1048576",
            EVENTS_DEAD_MAX_AGE_S="86400",
        )
        await conn.connect()
        await conn.close()
        events = (await js.stream_info("LIMITED")).config
        dead = (await js.stream_info("LIMITED_DEAD")).config
        assert (events.max_age, events.max_bytes) == (3600.0, 1048576)
        assert (dead.max_age, dead.max_bytes) == (86400.0, -1)
