"""The test harness owns what it touches: servers die with the process that started
them (SIGTERM and SIGKILL alike), a server started from a worker thread outlives that
thread, and starting PostgreSQL (as root: as an unprivileged user, from a private copy
of its binaries) changes the mode of no directory the harness did not create."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from testing import servers
from testing.servers import NatsServer, PostgresServer

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 20.0

CHILD = """
import json, sys
from testing.servers import nats_server, postgres_server

with postgres_server() as pg, nats_server() as ns:
    print(json.dumps({"pids": [pg.pid, ns.pid], "dirs": [str(pg.base_dir), str(ns.base_dir)]}),
          flush=True)
    sys.stdin.read()  # until killed
"""


def is_gone(pid: int) -> bool:
    """No such process, or only its zombie (nobody may reap it in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for(predicate: object, what: str, timeout: float = DEADLINE_S) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)  # polling interval, not synchronisation


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the child did not report its servers in time"
    return proc.stdout.readline()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    """A Python process that starts PostgreSQL and NATS through testing.servers."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_servers_die_with_their_parent(child: subprocess.Popen[str], sig: signal.Signals) -> None:
    """SIGTERM or SIGKILL of the process that started the servers takes them down,
    PostgreSQL's children included; on SIGTERM their directories are removed too, and
    what a SIGKILLed process left is removed by the next harness."""
    report = json.loads(read_line(child, timeout=60))
    pids = [pid for pid in report["pids"] if pid]
    assert len(pids) == 2
    pids += children_of(pids[0])  # the postmaster's checkpointer, walwriter, ...
    assert len(pids) > 3
    assert all(not is_gone(pid) for pid in pids)

    child.send_signal(sig)
    assert child.wait(timeout=DEADLINE_S) == -sig
    wait_for(lambda: all(is_gone(pid) for pid in pids), f"server processes {pids} gone")

    dirs = [Path(d) for d in report["dirs"]]
    if sig == signal.SIGTERM:
        assert not [d for d in dirs if d.exists()]
        return
    assert all(d.exists() for d in dirs)  # nobody could remove them ...
    for parent in {d.parent for d in dirs}:
        servers._swept.discard(parent)
        servers._sweep_stale(parent)  # ... until the next harness starts a server
    assert not [d for d in dirs if d.exists()]


def test_server_started_from_a_worker_thread_outlives_the_thread() -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* ends: a server started from a
    thread (asyncio.to_thread, an executor) must survive that thread."""
    server = NatsServer()
    try:
        worker = threading.Thread(target=server.start)
        worker.start()
        worker.join()
        native_id = worker.native_id
        wait_for(lambda: not Path(f"/proc/self/task/{native_id}").exists(), "thread gone")
        assert server.running
        assert servers._http_ok(f"http://127.0.0.1:{server.monitor_port}/healthz")
    finally:
        server.close()


def modes_under(*roots: Path) -> dict[Path, int]:
    """Mode of every directory in and above ``roots``."""
    found: dict[Path, int] = {}
    for root in roots:
        for above in [root, *root.parents]:
            found[above] = stat.S_IMODE(above.stat().st_mode)
        for directory, dirnames, _ in os.walk(root):
            for name in dirnames:
                path = Path(directory) / name
                found[path] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_no_existing_directory_changes_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL install inside a private 700 directory (a virtualenv under a home
    dir, say) and TMPDIR inside it: the server starts, and no directory that existed
    before (those, their parents, the real virtualenv's) changes mode. As root it runs
    as an unprivileged user from a copy of its binaries outside the private dir."""
    real_bin = servers._postgres_bin_dir()
    private = Path(tempfile.mkdtemp(prefix="private-"))
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        site = private / "venv" / "lib" / "site-packages"
        pginstall = site / real_bin.parent.parent.name / real_bin.parent.name
        (pginstall / "bin").mkdir(parents=True)
        for program in ("postgres", "initdb"):
            shutil.copy2(real_bin / program, pginstall / "bin" / program)
        for part in ("lib", "share"):
            shutil.copytree(real_bin.parent / part, pginstall / part, symlinks=True)
        libs = real_bin.parent.parent.parent / f"{real_bin.parent.parent.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name, symlinks=True)
        own_tmp = private / "tmp"
        own_tmp.mkdir(mode=0o700)
        monkeypatch.setattr(servers, "_postgres_bin_dir", lambda: pginstall / "bin")
        monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))

        before = modes_under(private, Path(sys.prefix), Path(tempfile.gettempdir()))
        with PostgresServer() as pg:
            with psycopg.connect(pg.url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            after = modes_under(private, Path(sys.prefix), Path(tempfile.gettempdir()))
            pid = pg.pid
            assert pid is not None
            status = Path(f"/proc/{pid}/status").read_text()
            uid = int(status.split("Uid:")[1].split()[0])
            exe = Path(os.readlink(f"/proc/{pid}/exe"))
            if os.geteuid() == 0:
                assert uid != 0
                assert pg.os_user is not None
                assert not exe.is_relative_to(private)
                assert not pg.base_dir.is_relative_to(private)
            else:
                assert uid == os.geteuid()
        changed = {
            d: (oct(m), oct(after.get(d, m))) for d, m in before.items() if after.get(d, m) != m
        }
        assert not changed
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(private, ignore_errors=True)
