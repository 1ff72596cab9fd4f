"""Logger: structured, leveled, context-aware logging."""

from __future__ import annotations

from typing import Any, Final, NoReturn, Protocol, runtime_checkable

__all__ = ["Logger", "LEVELS", "RESERVED_FIELDS", "SECRET_KEY_PARTS", "REDACTED"]

LEVELS: Final = ("debug", "info", "warning", "error", "fatal")
RESERVED_FIELDS: Final = frozenset({"timestamp", "level", "message", "service", "error", "logger"})
SECRET_KEY_PARTS: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "private_key",
    "credential",
)
REDACTED: Final = "[REDACTED]"


@runtime_checkable
class Logger(Protocol):
    """Structured logging with request context.

    Contract:

    - Each call writes one record with ``timestamp`` (RFC 3339 UTC), ``level``,
      ``message``, ``service``, the values of :mod:`ports.context` in force for the
      calling task (``request_id``, and ``event_id`` etc. inside event handlers),
      then the tags.
    - A tag never overwrites a reserved field (:data:`RESERVED_FIELDS`): it is
      kept as ``tag_<name>``.
    - Values of secret-looking keys (:data:`SECRET_KEY_PARTS`) and passwords in
      URLs are written as ``[REDACTED]``.
    - ``error``/``fatal`` record ``error: {type, message, stack}`` for ``exc``, or
      for the exception being handled when called inside ``except``.
    - ``fatal`` logs, flushes and raises ``SystemExit(1)``.
    - A call below the configured level does no formatting and no I/O.
    - Loggers are safe to share between tasks; ``bind`` returns a new logger and
      never changes the receiver.
    """

    def debug(self, msg: str, /, **tags: Any) -> None: ...

    def info(self, msg: str, /, **tags: Any) -> None: ...

    def warning(self, msg: str, /, **tags: Any) -> None: ...

    def warn(self, msg: str, /, **tags: Any) -> None:
        """Alias of :meth:`warning`."""
        ...

    def error(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> None: ...

    def fatal(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> NoReturn: ...

    def bind(self, **tags: Any) -> Logger:
        """A logger that adds ``tags`` to every record."""
        ...
