"""Events under real faults: NATS restarted twice under load, a consumer process killed
mid-event, a 3-node cluster losing its stream leader while we publish.

Each test prints its figures (run with ``-s`` to see them): events published, acked,
handled, lost, duplicates, and the time publishing took to resume.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from domain_errors import ServiceUnavailable
from ports.context import current_context
from ports.events import DeadLetter, Event
from testing.fakes import RecordingLogger
from testing.servers import nats_cluster, nats_server
from tests.helpers import wait_until, wait_until_async

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def _config(url: str, name: str, **extra: str) -> InMemoryConfig:
    return InMemoryConfig(
        {
            "NATS_URL": url,
            "EVENTS_STREAM": name,
            "EVENTS_PREFIX": name.lower(),
            "EVENTS_DEAD_PREFIX": f"{name.lower()}-dead",
            "EVENTS_STORAGE": "file",
            "EVENTS_PUBLISH_TIMEOUT_S": "1",
            "EVENTS_PUBLISH_RETRIES": "5",
            "EVENTS_PUBLISH_BACKOFF_S": "0.05",
            "EVENTS_PULL_EXPIRES_S": "0.5",
            "EVENTS_API_TIMEOUT_S": "2",
            "NATS_RECONNECT_WAIT_S": "0.05",
            **extra,
        }
    )


def _events(n: int, type_: str = "load.tick") -> list[Event]:
    return [
        Event(type=type_, source="faults", organization_id="org", data={"n": i}) for i in range(n)
    ]


async def test_restarts_under_load_lose_nothing() -> None:
    """10,000 events published in batches and consumed while the server restarts twice
    (same store): every acked event is handled at least once, none is lost."""
    total, batch = 10_000, 500
    events = _events(total)
    acked: set[str] = set()
    handled: Counter[str] = Counter()
    restarts: list[float] = []
    with nats_server() as server:
        conn = NatsConnection.from_config(_config(server.url, "RESTARTS"), logger=RecordingLogger())
        await conn.connect()
        publisher, subscriber = NatsPublisher(conn), NatsSubscriber(conn)

        async def handler(event: Event) -> None:
            handled[event.id] += 1

        sub = await subscriber.subscribe(
            "load.>", handler, durable="load", concurrency=8, ack_wait=2
        )

        async def publish_all() -> None:
            for start in range(0, total, batch):
                chunk = events[start : start + batch]
                while True:
                    try:
                        await publisher.publish_many(chunk)
                    except ServiceUnavailable:
                        continue  # the same ids again: nothing is stored twice
                    acked.update(e.id for e in chunk)
                    break

        async def restart_twice() -> None:
            for threshold in (3_000, 6_500):
                await wait_until(lambda t=threshold: len(acked) >= t, timeout=30)
                began = time.monotonic()
                await asyncio.to_thread(server.restart)
                restarts.append(time.monotonic() - began)

        began = time.monotonic()
        await asyncio.gather(publish_all(), restart_twice())
        await wait_until(lambda: acked <= set(handled), timeout=30, what="all acked handled")
        elapsed = time.monotonic() - began
        await sub.stop()
        await conn.close()
    lost = acked - set(handled)
    duplicates = sum(count - 1 for count in handled.values())
    print(
        f"\nrestarts: published {total}, acked {len(acked)}, handled {len(handled)}, "
        f"lost {len(lost)}, duplicates {duplicates}, restarts took "
        f"{', '.join(f'{r:.2f} s' for r in restarts)}, total {elapsed:.1f} s"
    )
    assert len(restarts) == 2
    assert len(acked) == total
    assert not lost


_CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from adapters.memory import InMemoryConfig
    from adapters.nats_events import NatsConnection, NatsSubscriber

    async def main():
        conn = NatsConnection.from_config(InMemoryConfig({values!r}))
        await conn.connect()

        async def handler(event):
            print("STARTED", event.id, flush=True)
            await asyncio.Event().wait()  # never finishes: killed mid-event

        await NatsSubscriber(conn).subscribe(
            "jobs.>", handler, durable="crash", ack_wait=1, max_deliver={max_deliver}
        )
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_consumer_killed_mid_event_means_redelivery(nats_url: str) -> None:
    """A consumer process SIGKILLed inside its handler never acks: the event is
    delivered again, to the next member of the durable; a crash is not a failed run,
    so it uses up no attempt (ADR 0024): the redelivery runs as attempt 1."""
    values = {
        "NATS_URL": nats_url,
        "EVENTS_STREAM": "CRASH",
        "EVENTS_PREFIX": "crash",
        "EVENTS_DEAD_PREFIX": "crash-dead",
        "EVENTS_STORAGE": "memory",
    }
    conn = NatsConnection.from_config(InMemoryConfig(values))
    await conn.connect()
    event = Event(type="jobs.run", source="faults", organization_id="org", data={"job": 1})
    await NatsPublisher(conn).publish(event)
    script = _CRASHING_CONSUMER.format(root=str(ROOT), values=values, max_deliver=5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, env={**os.environ}
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
    assert line.decode().split() == ["STARTED", event.id]
    proc.kill()
    await proc.wait()
    attempts: list[int] = []

    async def handler(e: Event) -> None:
        attempts.append(current_context()["attempt"])

    sub = await NatsSubscriber(conn).subscribe("jobs.>", handler, durable="crash", ack_wait=1)
    await wait_until(lambda: bool(attempts), timeout=10, what="redelivery after the crash")
    await sub.stop()
    await conn.jetstream.delete_stream("CRASH")
    await conn.jetstream.delete_stream("CRASH_DEAD")
    await conn.close()
    print(f"\nkilled consumer: event redelivered with attempt {attempts[0]}")
    assert attempts == [1]


async def _crash_once(script: str, event_id: str) -> None:
    """Run a consumer process until its handler starts on ``event_id``, then SIGKILL it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, env={**os.environ}
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line.decode().split() == ["STARTED", event_id]
    finally:
        proc.kill()
        await proc.wait()


async def test_an_event_that_crashes_every_member_is_dead_lettered(nats_url: str) -> None:
    """An event whose handler takes its process down every time (max_deliver=2): the
    first crash is not counted, each redelivery records its run before it starts, so
    after three crashed members the next one dead-letters it without running it."""
    values = {
        "NATS_URL": nats_url,
        "SERVICE_NAME": "crashloop",
        "EVENTS_STREAM": "CRASHLOOP",
        "EVENTS_PREFIX": "crashloop",
        "EVENTS_STORAGE": "memory",
    }
    conn = NatsConnection.from_config(InMemoryConfig(values))
    await conn.connect()
    event = Event(type="jobs.run", source="faults", organization_id="org", data={"job": 1})
    await NatsPublisher(conn).publish(event)
    script = _CRASHING_CONSUMER.format(root=str(ROOT), values=values, max_deliver=2)
    for _ in range(3):
        await _crash_once(script, event.id)
    ran: list[int] = []

    async def handler(e: Event) -> None:
        ran.append(current_context()["attempt"])

    subscriber = NatsSubscriber(conn)
    sub = await subscriber.subscribe("jobs.>", handler, durable="crash", ack_wait=1, max_deliver=2)
    dead: list[DeadLetter] = []

    async def stored() -> bool:
        dead[:] = await subscriber.dead_letters()
        return bool(dead)

    await wait_until_async(stored, timeout=15, what="dead letter after the crash loop")
    await sub.stop()
    await conn.jetstream.delete_stream("CRASHLOOP")
    await conn.jetstream.delete_stream("CRASHLOOP_DEAD")
    await conn.close()
    print(f"\ncrash loop: 3 members crashed, then dead-lettered ({dead[0].reason})")
    assert ran == []
    assert [(d.reason, d.attempts) for d in dead] == [("max_deliver", 2)]


async def test_cluster_node_killed_while_publishing() -> None:
    """A 3-node cluster, stream replicas 3: the stream leader is SIGKILLed while we
    publish; no acked event is lost and publishing resumes within seconds."""
    acked: list[Event] = []
    ack_times: list[float] = []
    with nats_cluster(3) as cluster:
        conn = NatsConnection.from_config(
            _config(
                cluster.url,
                "CLUSTER",
                EVENTS_REPLICAS="3",
                EVENTS_PUBLISH_RETRIES="60",
                EVENTS_PUBLISH_TIMEOUT_S="0.5",
                EVENTS_PUBLISH_BACKOFF_MAX_S="0.25",
            ),
            logger=RecordingLogger(),
        )
        await conn.connect()
        publisher = NatsPublisher(conn)
        info = await conn.jetstream.stream_info("CLUSTER")
        assert info.config.num_replicas == 3
        leader = info.cluster.leader if info.cluster is not None else None
        victim = next(n for n in cluster.nodes if n.server_name == leader)
        events = _events(1_000, "cluster.tick")
        killed_at: float | None = None

        async def publish_all() -> None:
            for event in events:
                await publisher.publish(event)
                acked.append(event)
                ack_times.append(time.monotonic())

        async def kill_leader() -> None:
            nonlocal killed_at
            await wait_until(lambda: len(acked) >= 300, timeout=30)
            killed_at = time.monotonic()
            await asyncio.to_thread(victim.kill)

        await asyncio.gather(publish_all(), kill_leader())
        assert killed_at is not None
        # The failover pause: the longest silence between acks around and after the kill
        # (a publish in flight at the kill may still be acked at once).
        around = [killed_at, *(t for t in ack_times if t > killed_at)]
        resume = max(b - a for a, b in itertools.pairwise(around))
        before = [b - a for a, b in itertools.pairwise(t for t in ack_times if t < killed_at)]
        new_leader = (await conn.jetstream.stream_info("CLUSTER")).cluster

        seen: set[str] = set()

        async def handler(event: Event) -> None:
            seen.add(event.id)

        sub = None
        deadline = time.monotonic() + 20
        while sub is None:  # the degraded cluster may still be electing leaders
            try:
                sub = await NatsSubscriber(conn).subscribe("cluster.>", handler, durable="audit")
            except ServiceUnavailable:
                if time.monotonic() > deadline:
                    raise
        subscribed_after = time.monotonic() - killed_at
        wanted = {e.id for e in acked}
        await wait_until(lambda: wanted <= seen, timeout=30, what="every acked event stored")
        await sub.stop()
        await conn.close()
    lost = wanted - seen
    print(
        f"\ncluster: published {len(events)}, acked {len(acked)}, read back {len(seen)}, "
        f"lost {len(lost)}, killed leader {leader}, new leader "
        f"{new_leader.leader if new_leader else '?'}, publishing paused {resume:.2f} s "
        f"(longest pause before the kill {max(before):.3f} s), consumer created "
        f"{subscribed_after:.1f} s after the kill"
    )
    assert len(acked) == len(events)
    assert not lost
    # NATS elects a new stream leader after 4-9 s (raft election timeout, nats-server).
    assert resume < 12.0
