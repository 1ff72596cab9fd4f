"""Log record rules shared by every Logger implementation (stdlib only).

StructlogLogger and testing's RecordingLogger both build their records with these
functions, so that the logger contract (reserved fields, redaction, error capture,
levels) holds the same way for the real adapter and the fake.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Hashable, Mapping
from contextvars import ContextVar
from typing import Any, Final

from domain_errors import ConfigurationError
from ports.logger import LEVELS, REDACTED, RESERVED_FIELDS

from .redaction import (
    MAX_DEPTH,
    TRUNCATED,
    ValueBudget,
    is_secret_name,
    redact_error_text,
    redact_text,
    redact_value,
    safe_str,
)

__all__ = [
    "LEVEL_NUMBERS",
    "level_number",
    "key_kind",
    "PLAIN",
    "RESERVED",
    "SECRET",
    "redact_text",
    "redact_error_text",
    "clean_value",
    "MAX_DEPTH",
    "TRUNCATED",
    "merge_fields",
    "clean_fields",
    "error_fields",
    "current_exception",
    "ACCESS_LOGGED",
    "RepeatLimiter",
    "set_trace_hook",
    "add_trace_ids",
]

ACCESS_LOGGED: Final[ContextVar[bool]] = ContextVar("hexinfra_access_logged", default=False)
"""True inside a request whose access line ``RequestContextMiddleware`` writes: the
stdlib bridge then drops the server's own access line (one line per request)."""

_trace_hook: Callable[[], tuple[str, str] | None] | None = None


def set_trace_hook(hook: Callable[[], tuple[str, str] | None] | None) -> None:
    """Install (or, with ``None``, remove) the function giving the current span's
    ``(trace_id, span_id)`` in hex; ``adapters.telemetry`` installs it (ADR 0031)."""
    global _trace_hook  # noqa: PLW0603 - one process-wide hook, set at start-up
    _trace_hook = hook


def add_trace_ids(target: dict[str, Any]) -> None:
    """Add ``trace_id`` / ``span_id`` of the current span to ``target`` (nothing
    outside a span, or when no hook is installed: one global read)."""
    hook = _trace_hook
    if hook is not None:
        ids = hook()
        if ids is not None:
            target["trace_id"], target["span_id"] = ids


LEVEL_NUMBERS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "fatal": 50}
_LEVEL_ALIASES: Final = {"warn": "warning", "critical": "fatal"}

PLAIN: Final = 0
RESERVED: Final = 1
SECRET: Final = 2

_kinds: dict[str, int] = {}
_KINDS_MAX: Final = 4096


def level_number(name: str, *, setting: str = "LOG_LEVEL") -> int:
    """The number of a level name (``debug`` 10 ... ``fatal`` 50), any case.

    ``warn`` and ``critical`` are accepted as aliases. An unknown name is a
    ``ConfigurationError`` naming ``setting`` and the accepted names.
    """
    word = name.strip().lower()
    word = _LEVEL_ALIASES.get(word, word)
    number = LEVEL_NUMBERS.get(word)
    if number is None:
        raise ConfigurationError(
            f"setting {setting} must be one of {', '.join(LEVELS[:4])}",
            details={"key": setting, "expected": list(LEVELS[:4])},
        )
    return number


def key_kind(key: str) -> int:
    """Whether a field name is PLAIN, RESERVED (renamed ``tag_<key>``) or SECRET (redacted).

    Results are cached: field names in a service are few and repeat on every line.
    """
    kind = _kinds.get(key)
    if kind is not None:
        return kind
    if is_secret_name(key):
        kind = SECRET
    elif key in RESERVED_FIELDS:
        kind = RESERVED
    else:
        kind = PLAIN
    if len(_kinds) < _KINDS_MAX:
        _kinds[key] = kind
    return kind


clean_value = redact_value
"""A tag value with secrets hidden at any depth (see :func:`adapters.redaction.redact_value`)."""


def merge_fields(target: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Add ``fields`` to ``target``: reserved names as ``tag_<name>``, secrets redacted.

    The structured values among ``fields`` share one :class:`ValueBudget` (cycles and
    oversized structures are cut to ``"[...]"``, ADR 0026)."""
    kinds = _kinds
    budget: ValueBudget | None = None
    for key, value in fields.items():
        kind = kinds.get(key)
        if kind is None:
            kind = key_kind(key)
        if kind == PLAIN:
            cls = type(value)
            if cls is str:
                target[key] = (
                    redact_text(value)
                    if ":" in value
                    or "=" in value
                    or (
                        " " in value
                        and (
                            "earer" in value
                            or "asic" in value
                            or "EARER" in value
                            or "ASIC" in value
                        )
                    )
                    else value
                )
            elif cls is int or cls is float or cls is bool or value is None:
                target[key] = value
            else:
                if budget is None:
                    budget = ValueBudget()
                target[key] = clean_value(value, budget)
        elif kind == SECRET:
            target[key] = REDACTED
        else:
            if budget is None:
                budget = ValueBudget()
            target[f"tag_{key}"] = clean_value(value, budget)


def clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict of ``fields`` after :func:`merge_fields`."""
    result: dict[str, Any] = {}
    merge_fields(result, fields)
    return result


def current_exception() -> BaseException | None:
    """The exception being handled by the caller (inside ``except``), if any."""
    return sys.exc_info()[1]


_STACK_FAILED: Final = "<the stack could not be rendered>"


def error_fields(exc: BaseException) -> dict[str, str]:
    """``{type, message, stack}`` for ``exc``, secrets and quoted row values redacted
    (:func:`adapters.redaction.redact_error_text`). Never raises, whatever the
    exception's ``str()`` or ``repr()`` (or those of its causes) do."""
    try:
        name = type(exc).__qualname__
    except Exception:  # pragma: no cover - a type without a readable name
        name = "BaseException"
    try:
        stack = "".join(traceback.format_exception(exc))
    except Exception:
        stack = f"{name}: {_STACK_FAILED}"
    return {
        "type": name,
        "message": redact_error_text(safe_str(exc)),
        "stack": redact_error_text(stack),
    }


class RepeatLimiter:
    """Rate-limits identical log lines: the first is written, then at most one per
    ``interval`` seconds, carrying how many were withheld since the previous one.

    ``admit(key)`` is ``None`` for a line to withhold, else the number withheld
    before it (0 the first time: write no ``repeated`` tag). Keys are whatever makes
    two lines identical (logger, level and message, say); at most ``max_keys`` are
    remembered (then the table starts afresh). Not thread-safe by itself: a lost
    count under a race costs a number, never a line of another kind.
    """

    __slots__ = ("_clock", "_interval", "_max_keys", "_seen")

    def __init__(
        self,
        interval: float = 10.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._seen: dict[Hashable, list[float]] = {}

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self._max_keys:
                self._seen.clear()
            self._seen[key] = [now, 0]
            return 0
        if now - seen[0] < self._interval:
            seen[1] += 1
            return None
        withheld = int(seen[1])
        seen[0], seen[1] = now, 0
        return withheld
