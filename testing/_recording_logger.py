"""RecordingLogger: a Logger that keeps its records in memory for assertions."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import attrs

from adapters._log_fields import (
    LEVEL_NUMBERS,
    add_trace_ids,
    clean_fields,
    current_exception,
    error_fields,
    level_number,
    merge_fields,
)
from adapters.redaction import redact_text, safe_str
from ports.context import current_context


def _context_fields() -> dict[str, Any]:
    """The context values, and the current span's ``trace_id`` / ``span_id``."""
    fields = clean_fields(current_context())
    add_trace_ids(fields)
    return fields


if TYPE_CHECKING:
    from ports.logger import Logger

__all__ = ["RecordingLogger", "LogRecord"]

_UNSET: Any = object()


@attrs.frozen
class LogRecord:
    """One captured log call, after the logger contract's rules were applied.

    ``tags`` and ``context`` are as the JSON line would show them: reserved names
    renamed ``tag_<name>``, secret-looking values ``[REDACTED]``. ``error`` is
    ``{type, message, stack}`` or ``None``; ``exception`` is the exception object
    itself, for ``isinstance`` checks.
    """

    level: str
    message: str
    tags: Mapping[str, Any]
    context: Mapping[str, Any]
    service: str
    timestamp: datetime
    error: Mapping[str, str] | None = None
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as StructlogLogger writes it: one flat JSON-compatible mapping."""
        line: dict[str, Any] = {
            "timestamp": self.timestamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": self.level,
            "message": self.message,
            "service": self.service,
        }
        line.update(self.context)
        line.update(self.tags)
        if self.error is not None:
            line["error"] = dict(self.error)
        return line

    def __str__(self) -> str:
        fields = {**self.context, **self.tags}
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        error = f" error={self.error['type']}" if self.error else ""
        return f"{self.level} {self.message!r} {{{shown}}}{error}"


class _Sink:
    """Records shared by a RecordingLogger and every logger bound from it."""

    __slots__ = ("lock", "records")

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.lock = threading.Lock()


class RecordingLogger:
    """A :class:`ports.logger.Logger` that records instead of writing.

    It follows the same contract as the real logger (it runs the same contract
    suite): context capture, reserved-field renaming, redaction, error capture,
    ``fatal`` raising ``SystemExit(1)``, level filtering. Loggers made with
    :meth:`bind` record into the same list, so asserting on the root logger sees
    everything a component logged::

        log = RecordingLogger()
        service = OrderService(logger=log)
        service.place("o1")
        log.assert_logged("order placed", level="info", order_id="o1")
        assert log.messages(level="error") == []

    Thread- and task-safe.
    """

    __slots__ = ("_bound", "_min", "_service", "_sink")

    def __init__(self, *, level: str = "debug", service: str = "test") -> None:
        self._min = level_number(level, setting="level")
        self._service = service
        self._bound: dict[str, Any] = {}
        self._sink = _Sink()

    # -- Logger port -----------------------------------------------------------

    def debug(self, msg: str, /, **tags: Any) -> None:
        """Record ``msg`` at debug level."""
        self._log("debug", msg, tags, None)

    def info(self, msg: str, /, **tags: Any) -> None:
        """Record ``msg`` at info level."""
        self._log("info", msg, tags, None)

    def warning(self, msg: str, /, **tags: Any) -> None:
        """Record ``msg`` at warning level."""
        self._log("warning", msg, tags, None)

    def warn(self, msg: str, /, **tags: Any) -> None:
        """Alias of :meth:`warning`."""
        self._log("warning", msg, tags, None)

    def error(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> None:
        """Record ``msg`` at error level with ``exc`` (or the one being handled)."""
        self._log("error", msg, tags, exc if exc is not None else current_exception())

    def fatal(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> NoReturn:
        """Record ``msg`` at fatal level, then raise ``SystemExit(1)``."""
        self._log("fatal", msg, tags, exc if exc is not None else current_exception())
        raise SystemExit(1)

    def bind(self, **tags: Any) -> RecordingLogger:
        """A logger adding ``tags`` to each record, sharing this logger's records."""
        child = object.__new__(RecordingLogger)
        child._min = self._min
        child._service = self._service
        child._sink = self._sink
        child._bound = {**self._bound, **tags}
        return child

    def _log(
        self, level: str, msg: str, tags: Mapping[str, Any], exc: BaseException | None
    ) -> None:
        if LEVEL_NUMBERS[level] < self._min:
            return
        try:
            merged = clean_fields(self._bound)
            merge_fields(merged, tags)
            record = LogRecord(
                level=level,
                message=redact_text(msg if type(msg) is str else safe_str(msg)),
                tags=merged,
                context=_context_fields(),
                service=self._service,
                timestamp=datetime.now(UTC),
                error=error_fields(exc) if exc is not None else None,
                exception=exc,
            )
        except Exception as failure:  # a log call never raises, as StructlogLogger's
            record = LogRecord(
                level=level,
                message="log call failed",
                tags={"log_error": safe_str(type(failure).__name__)},
                context={},
                service=self._service,
                timestamp=datetime.now(UTC),
                exception=exc,
            )
        with self._sink.lock:
            self._sink.records.append(record)

    # -- inspection --------------------------------------------------------------

    @property
    def records(self) -> list[LogRecord]:
        """A copy of every record so far, oldest first."""
        with self._sink.lock:
            return list(self._sink.records)

    def messages(self, level: str | None = None) -> list[str]:
        """The messages recorded so far (at ``level`` only, when given)."""
        return [r.message for r in self.records if level is None or r.level == level]

    def clear(self) -> None:
        """Forget every record (for this logger and all bound from the same root)."""
        with self._sink.lock:
            self._sink.records.clear()

    def find(
        self,
        message: str | re.Pattern[str] | None = None,
        *,
        level: str | None = None,
        error: type[BaseException] | None = None,
        **fields: Any,
    ) -> list[LogRecord]:
        """Records matching every criterion given.

        ``message`` is compared exactly, or searched when it is a compiled regex;
        ``error`` is an exception class the record's exception must be an instance
        of; other keywords must equal the field of that name in the record's
        :meth:`LogRecord.to_dict` (tags, context, ``service``...).
        """
        return [r for r in self.records if _matches(r, message, level, error, fields)]

    def assert_logged(
        self,
        message: str | re.Pattern[str] | None = None,
        *,
        level: str | None = None,
        error: type[BaseException] | None = None,
        **fields: Any,
    ) -> LogRecord:
        """The one-or-more matching record (the first); ``AssertionError`` listing all if none."""
        found = self.find(message, level=level, error=error, **fields)
        if not found:
            raise AssertionError(
                f"no log record matching {_criteria(message, level, error, fields)}; "
                + self._listing()
            )
        return found[0]

    def assert_not_logged(
        self,
        message: str | re.Pattern[str] | None = None,
        *,
        level: str | None = None,
        error: type[BaseException] | None = None,
        **fields: Any,
    ) -> None:
        """``AssertionError`` naming the offending records if any record matches."""
        found = self.find(message, level=level, error=error, **fields)
        if found:
            shown = "\n".join(f"  {r}" for r in found)
            raise AssertionError(
                f"unexpected log record(s) matching {_criteria(message, level, error, fields)}:\n"
                + shown
            )

    def _listing(self) -> str:
        records = self.records
        if not records:
            return "nothing was logged"
        shown = "\n".join(f"  {r}" for r in records)
        return f"{len(records)} record(s) captured:\n{shown}"

    def __len__(self) -> int:
        return len(self._sink.records)

    def __repr__(self) -> str:
        return f"RecordingLogger(records={len(self)}, bound={sorted(self._bound)})"


def _matches(
    record: LogRecord,
    message: str | re.Pattern[str] | None,
    level: str | None,
    error: type[BaseException] | None,
    fields: Mapping[str, Any],
) -> bool:
    if level is not None and record.level != level:
        return False
    if isinstance(message, re.Pattern):
        if message.search(record.message) is None:
            return False
    elif message is not None and record.message != message:
        return False
    if error is not None and not isinstance(record.exception, error):
        return False
    if fields:
        flat = record.to_dict()
        return all(flat.get(k, _UNSET) == v for k, v in fields.items())
    return True


def _criteria(
    message: str | re.Pattern[str] | None,
    level: str | None,
    error: type[BaseException] | None,
    fields: Mapping[str, Any],
) -> str:
    parts: list[str] = []
    if message is not None:
        parts.append(f"message={getattr(message, 'pattern', message)!r}")
    if level is not None:
        parts.append(f"level={level!r}")
    if error is not None:
        parts.append(f"error={error.__name__}")
    parts.extend(f"{k}={v!r}" for k, v in fields.items())
    return ", ".join(parts) or "anything"


if TYPE_CHECKING:  # mypy checks that RecordingLogger implements the port
    _check: type[Logger] = RecordingLogger
