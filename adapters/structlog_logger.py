"""StructlogLogger: the Logger port as JSON lines (orjson) or console text (structlog).

``configure_logging(config)`` reads ``SERVICE_NAME``, ``LOG_LEVEL``
(debug/info/warning/error, default info) and ``LOG_FORMAT`` (``json``, the default,
or ``console``) and returns a logger writing to stdout (or the ``stream`` given).

In JSON format every call writes one object on one line, keys in this order::

    {"timestamp": "2030-01-01T12:00:00.123456Z", "level": "info", "message": "...",
     "service": "orders", "request_id": "...", <bound tags>, <call tags>,
     "error": {"type": ..., "message": ..., "stack": ...}}

The logger contract (:class:`ports.logger.Logger`) holds: the request context of the
calling task, ``tag_<name>`` for a tag that would overwrite a reserved field,
``[REDACTED]`` for secret-looking keys and URL passwords (in tags at any depth, in
the message and in error text), ``error`` for ``exc=`` or the exception being
handled, ``fatal`` flushing and raising ``SystemExit(1)``.

How it is built, and why (ADR 0006): each logger owns its processor chain; nothing
goes through ``structlog.configure`` global state, so two loggers (or two tests)
never share settings. A call first compares its level with the logger's minimum
(a filtered call does nothing else), then builds the event dict in one pass
(timestamp, level, message, service, context, tags), runs any extra structlog
processors given to :func:`configure_logging`, and renders: orjson to bytes for
JSON, ``structlog.dev.ConsoleRenderer`` for console. One write and one flush per
line, under a lock, so lines from threads never interleave and a crash loses no
line already logged. A value orjson cannot encode is written with ``str()``; a
logging call never raises (except ``fatal``, on purpose).

The standard ``logging`` module (ADR 0029): ``configure_logging(config)`` also
routes its records (uvicorn, psycopg, nats-py, asyncio...) into the same lines,
through a handler on the root logger (:func:`capture_stdlib_logging`): the same
level filter, request context and redaction, the record's logger name in
``logger`` and its exception in ``error``. uvicorn's access line is dropped for a
request whose ``request completed`` line ``RequestContextMiddleware`` writes (one
access line per request). Identical warnings (same logger, level and message)
repeating are written once, then at most once per ``repeat_interval`` seconds with
``repeated=<lines withheld since>``.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any, Final, NoReturn

import orjson
import structlog
from structlog.typing import Processor

from domain_errors import ConfigurationError
from ports.config import ConfigSource
from ports.context import current_context
from ports.logger import Logger

from ._log_fields import (
    ACCESS_LOGGED,
    RepeatLimiter,
    add_trace_ids,
    clean_fields,
    current_exception,
    error_fields,
    level_number,
    merge_fields,
)
from .redaction import redact_error_text, redact_text, safe_str

__all__ = ["StructlogLogger", "configure_logging", "capture_stdlib_logging", "LOG_FORMATS"]

LOG_FORMATS: Final = ("json", "console")

# Messages found to hold nothing to redact (mostly literals: few, and repeated on every
# line); only those are kept, so no secret is ever held here.
_PLAIN_MESSAGES: dict[str, str] = {}
_PLAIN_MESSAGES_MAX: Final = 4096
_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
_DEBUG, _INFO, _WARNING, _ERROR = 10, 20, 30, 40


def _json_default(value: Any) -> Any:
    """orjson fallback: a value is written as its ``str``, secrets redacted.

    A Secret writes ``***``; a URL object (yarl, pydantic...) shows no password; an
    exception (a tag ``err=exc``) is redacted as error text is; a ``str()`` that
    raises gives ``<Type: str() failed>``. (Tags were cleaned before: sets and
    tuples are lists by then.)
    """
    if isinstance(value, BaseException):
        return redact_error_text(safe_str(value))
    return redact_text(safe_str(value))


def _render_json(_: Any, __: str, event: MutableMapping[str, Any]) -> bytes:
    """Final processor: the event as one JSON line (bytes, newline included)."""
    try:
        return orjson.dumps(event, default=_json_default, option=_OPTIONS)
    except Exception:  # JSONEncodeError, or whatever a default hook raised
        return _render_json_slow(event)


def _render_json_slow(event: MutableMapping[str, Any]) -> bytes:
    """What orjson refuses (huge ints, lone surrogates, cycles) goes through json."""
    stamp = event.get("timestamp")
    if isinstance(stamp, datetime):
        event["timestamp"] = stamp.isoformat().replace("+00:00", "Z")
    try:
        text = json.dumps(event, default=_json_default, separators=(",", ":"))
    except Exception:  # a value whose __str__ raises, a processor's odd output...
        safe = {k: event.get(k) for k in ("timestamp", "level", "message", "service")}
        safe["log_error"] = "fields could not be serialised"
        text = json.dumps(safe, default=str, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace") + b"\n"


def _fallback_line(level: str, service: str, failure: Exception) -> bytes:
    """The line written when building the real one failed (a processor that raised,
    say): level, service and the failure's type, nothing of the call's values."""
    line = {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "level": level,
        "message": "log call failed",
        "service": service,
        "log_error": safe_str(type(failure).__name__),
    }
    return json.dumps(line, default=str, separators=(",", ":")).encode("utf-8", "replace") + b"\n"


class _ConsoleRenderer:
    """Final processor for ``LOG_FORMAT=console``: structlog's ConsoleRenderer."""

    def __init__(self, colors: bool) -> None:
        self._renderer = structlog.dev.ConsoleRenderer(
            colors=colors, event_key="message", sort_keys=False, pad_event_to=30
        )

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> bytes:
        stamp = event.get("timestamp")
        if isinstance(stamp, datetime):
            event["timestamp"] = stamp.isoformat().replace("+00:00", "Z")
        error = event.get("error")
        if isinstance(error, Mapping):
            del event["error"]
            event["exception"] = error.get("stack", "")
        text = self._renderer(logger, name, event)
        return (str(text) + "\n").encode("utf-8", "backslashreplace")


def _is_binary(stream: object) -> bool:
    """Whether ``stream`` takes bytes (BytesIO, a file opened "wb", ``sys.stdout.buffer``)."""
    if isinstance(stream, io.TextIOBase):
        return False
    if isinstance(stream, io.BufferedIOBase | io.RawIOBase):
        return True
    return "b" in str(getattr(stream, "mode", ""))


class _Output:
    """Where a family of loggers (one configure_logging call) writes."""

    __slots__ = ("binary", "dropped", "flush", "lock", "stream", "write")

    def __init__(self, stream: IO[Any]) -> None:
        self.stream = stream
        self.binary = _is_binary(stream)
        self.write: Callable[[Any], Any] = stream.write
        self.flush: Callable[[], Any] = stream.flush
        self.lock = threading.Lock()
        self.dropped = 0

    def emit(self, line: bytes) -> None:
        data: Any = line if self.binary else line.decode("utf-8")
        try:
            with self.lock:
                self.write(data)
                self.flush()
        except Exception:
            self.dropped += 1  # a closed or broken stdout must not take the service down


class StructlogLogger:
    """:class:`ports.logger.Logger` writing JSON lines or console text.

    Build one with :func:`configure_logging` (from config) or directly::

        log = StructlogLogger(service="orders", level="info", stream=sys.stdout)

    ``processors`` are extra structlog processors run on the event dict after it
    is built and before it is rendered. Loggers are immutable and safe to share
    between threads and tasks; :meth:`bind` returns a new one writing to the
    same output.
    """

    __slots__ = ("_bound", "_chain", "_min", "_out", "_render", "_service")

    def __init__(
        self,
        *,
        service: str,
        level: str = "info",
        format: str = "json",
        stream: IO[Any] | None = None,
        processors: Iterable[Processor] = (),
    ) -> None:
        if format not in LOG_FORMATS:
            raise ConfigurationError(
                f"setting LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}",
                details={"key": "LOG_FORMAT", "expected": list(LOG_FORMATS)},
            )
        out = stream if stream is not None else sys.stdout
        self._min = level_number(level)
        self._service = service
        self._out = _Output(out)
        self._chain: tuple[Processor, ...] = tuple(processors)
        self._render: Callable[[Any, str, MutableMapping[str, Any]], bytes] = (
            _render_json
            if format == "json"
            else _ConsoleRenderer(colors=bool(getattr(out, "isatty", bool)()))
        )
        self._bound: dict[str, Any] = {}

    # -- Logger port -------------------------------------------------------------

    def debug(self, msg: str, /, **tags: Any) -> None:
        """Log ``msg`` at debug level."""
        if self._min <= _DEBUG:
            self._emit("debug", msg, tags, None)

    def info(self, msg: str, /, **tags: Any) -> None:
        """Log ``msg`` at info level."""
        if self._min <= _INFO:
            self._emit("info", msg, tags, None)

    def warning(self, msg: str, /, **tags: Any) -> None:
        """Log ``msg`` at warning level."""
        if self._min <= _WARNING:
            self._emit("warning", msg, tags, None)

    warn = warning

    def error(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> None:
        """Log ``msg`` at error level, with ``exc`` or the exception being handled."""
        if self._min <= _ERROR:
            self._emit("error", msg, tags, exc if exc is not None else current_exception())

    def fatal(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> NoReturn:
        """Log ``msg`` at fatal level (never filtered), flush, raise ``SystemExit(1)``."""
        self._emit("fatal", msg, tags, exc if exc is not None else current_exception())
        try:
            self._out.flush()
        except (OSError, ValueError):
            self._out.dropped += 1
        raise SystemExit(1)

    def bind(self, **tags: Any) -> StructlogLogger:
        """A logger adding ``tags`` (checked and redacted once, here) to every line."""
        child = object.__new__(StructlogLogger)
        child._min = self._min
        child._service = self._service
        child._out = self._out
        child._chain = self._chain
        child._render = self._render
        child._bound = {**self._bound, **clean_fields(tags)}
        return child

    # -- internals ---------------------------------------------------------------

    @property
    def level(self) -> int:
        """The minimum level number written (debug 10, info 20, warning 30, error 40)."""
        return self._min

    @property
    def dropped(self) -> int:
        """Lines that could not be written because the stream failed."""
        return self._out.dropped

    def _emit(
        self,
        level: str,
        msg: str,
        tags: dict[str, Any],
        exc: BaseException | None,
        origin: str | None = None,
    ) -> None:
        try:
            if type(msg) is not str:
                msg = safe_str(msg)
            message = _PLAIN_MESSAGES.get(msg)
            if message is None:
                message = redact_text(msg)
                if message == msg and len(_PLAIN_MESSAGES) < _PLAIN_MESSAGES_MAX:
                    _PLAIN_MESSAGES[msg] = msg
            event: dict[str, Any] = {
                "timestamp": datetime.now(UTC),
                "level": level,
                "message": message,
                "service": self._service,
            }
            if origin is not None:  # a stdlib record's logger name
                event["logger"] = origin
            context = current_context()
            if context:
                merge_fields(event, context)
            add_trace_ids(event)
            if self._bound:
                event.update(self._bound)
            if tags:
                merge_fields(event, tags)
            if exc is not None:
                event["error"] = error_fields(exc)
            for processor in self._chain:
                event = processor(self, level, event)  # type: ignore[assignment]
            line = self._render(self, level, event)
        except Exception as failure:  # a log call never raises (ADR 0026)
            line = _fallback_line(level, self._service, failure)
        self._out.emit(line)

    def __repr__(self) -> str:
        return f"StructlogLogger(service={self._service!r}, level={self._min})"


def configure_logging(
    config: ConfigSource,
    *,
    stream: IO[Any] | None = None,
    processors: Iterable[Processor] = (),
    capture_stdlib: bool = True,
) -> Logger:
    """A :class:`StructlogLogger` set up from ``config``.

    Reads ``SERVICE_NAME`` (default ``"app"``), ``LOG_LEVEL`` (debug/info/warning/error,
    any case, default ``info``) and ``LOG_FORMAT`` (``json`` default, ``console``).
    Writes to ``stream`` (default: ``sys.stdout`` at the time of this call). An
    unknown level or format is a ``ConfigurationError`` naming the setting.
    Calling it twice gives two independent loggers.

    With ``capture_stdlib`` (the default) the records of the standard ``logging``
    module come out through this logger too (:func:`capture_stdlib_logging`: the
    one global change, replacing the capture of an earlier call). Pass
    ``capture_stdlib=False`` for a logger that must leave ``logging`` alone.
    """
    fmt = config.get_str("LOG_FORMAT", "json").strip().lower()
    logger = StructlogLogger(
        service=config.get_str("SERVICE_NAME", "app"),
        level=config.get_str("LOG_LEVEL", "info"),
        format=fmt,
        stream=stream,
        processors=processors,
    )
    if capture_stdlib:
        capture_stdlib_logging(logger)
    return logger


# -- the standard logging module -----------------------------------------------------

_RECORD_ATTRS: Final = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", (), None)),
        "message",
        "asctime",
        "color_message",  # uvicorn's coloured copy of the message
        "taskName",
    }
)
_SERVER_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")
_ACCESS_LOGGER: Final = "uvicorn.access"
_capture_lock = threading.Lock()


def _level_name(levelno: int) -> str:
    # CRITICAL is written as error: a library's record must never mean SystemExit.
    if levelno < _INFO:
        return "debug"
    if levelno < _WARNING:
        return "info"
    if levelno < _ERROR:
        return "warning"
    return "error"


class _StdlibBridge(logging.Handler):
    """A ``logging.Handler`` writing records through a :class:`StructlogLogger`."""

    def __init__(self, logger: StructlogLogger, repeat_interval: float) -> None:
        super().__init__(level=logger.level)
        self.logger = logger
        self._repeats = RepeatLimiter(repeat_interval)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            name = record.name
            tags: dict[str, Any] = {}
            if name == _ACCESS_LOGGER:
                if ACCESS_LOGGED.get():
                    return  # RequestContextMiddleware writes this request's line
                args = record.args
                if isinstance(args, tuple) and len(args) == 5:
                    client, method, path, version, status = args
                    tags = {
                        "client": client,
                        "method": method,
                        "path": path,
                        "http_version": version,
                        "status": status,
                    }
            for key, value in record.__dict__.items():
                if key not in _RECORD_ATTRS:
                    tags[key] = value
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                withheld = self._repeats.admit((name, record.levelno, message))
                if withheld is None:
                    return
                if withheld:
                    tags["repeated"] = withheld
            exc = record.exc_info[1] if record.exc_info else None
            self.logger._emit(_level_name(record.levelno), message, tags, exc, origin=name)
        except Exception:  # a log call never raises, a library's neither
            self.logger._out.dropped += 1


def capture_stdlib_logging(
    logger: StructlogLogger, *, repeat_interval: float = 10.0
) -> logging.Handler:
    """Route the standard ``logging`` module's records through ``logger``.

    Puts one handler on the root logger (replacing the one an earlier call put
    there) and sets the root level to the logger's, so that the level filter is the
    same. uvicorn's own handlers (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``)
    are removed and those loggers propagate: their lines come out once, as ours.
    Other handlers on the root logger are left as they are. Returns the handler.
    """
    bridge = _StdlibBridge(logger, repeat_interval)
    root = logging.getLogger()
    with _capture_lock:
        for handler in list(root.handlers):
            if isinstance(handler, _StdlibBridge):
                root.removeHandler(handler)
        root.addHandler(bridge)
        root.setLevel(logger.level)
        for name in _SERVER_LOGGERS:
            server_logger = logging.getLogger(name)
            for handler in list(server_logger.handlers):
                server_logger.removeHandler(handler)
            server_logger.propagate = True
    return bridge
