"""Rules every event adapter applies the same way: subjects, durables, settings.

Private to the adapters: the NATS adapter and the in-memory bus both validate with
these functions, so that a name one of them refuses, the other refuses too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final, NoReturn

from adapters.redaction import redact_error_text, safe_str
from domain_errors import BadRequest

__all__ = [
    "check_publish_subject",
    "check_subscribe_subject",
    "check_durable",
    "check_subscribe_options",
    "subject_pattern",
    "backoff_delay",
    "REASON_REJECTED",
    "REASON_MAX_DELIVER",
    "REASON_UNDECODABLE",
    "NullLogger",
    "describe",
    "DEFAULT_MAX_PAYLOAD",
    "wire_size",
    "check_wire_size",
]

REASON_REJECTED: Final = "rejected"
REASON_MAX_DELIVER: Final = "max_deliver"
REASON_UNDECODABLE: Final = "undecodable"

DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
"""NATS's default ``max_payload`` (1 MiB): what the in-memory bus enforces unless told."""

_HEADER_LINE_OVERHEAD: Final = len(b": \r\n")
_HEADER_BLOCK_OVERHEAD: Final = len(b"NATS/1.0\r\n\r\n")

_DURABLE: Final = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_MAX_SUBJECT: Final = 1024


def _tokens(subject: str, what: str) -> list[str]:
    if not isinstance(subject, str) or not subject:
        raise BadRequest(f"{what} must be a non-empty string", details={"field": "subject"})
    if len(subject) > _MAX_SUBJECT:
        raise BadRequest(f"{what} is too long", details={"field": "subject"})
    if any(c.isspace() for c in subject):
        raise BadRequest(f"{what} {subject!r} contains whitespace", details={"field": "subject"})
    tokens = subject.split(".")
    if "" in tokens:
        raise BadRequest(f"{what} {subject!r} has an empty token", details={"field": "subject"})
    return tokens


@lru_cache(maxsize=4096)
def check_publish_subject(subject: str) -> str:
    """A literal subject (dot-separated tokens, no wildcards, no whitespace)."""
    _tokens(subject, "event subject")
    if "*" in subject or ">" in subject:
        raise BadRequest(
            f"event subject {subject!r} must not contain wildcards ('*', '>')",
            details={"field": "subject"},
        )
    return subject


@lru_cache(maxsize=1024)
def check_subscribe_subject(subject: str) -> str:
    """A subject filter: ``*`` matches one token, ``>`` one or more at the end."""
    tokens = _tokens(subject, "subscription subject")
    for i, part in enumerate(tokens):
        if ("*" in part or ">" in part) and part not in ("*", ">"):
            raise BadRequest(
                f"subscription subject {subject!r}: a wildcard must be a whole token",
                details={"field": "subject"},
            )
        if part == ">" and i != len(tokens) - 1:
            raise BadRequest(
                f"subscription subject {subject!r}: '>' must be the last token",
                details={"field": "subject"},
            )
    return subject


def check_durable(durable: str) -> str:
    """A durable (consumer group) name: letters, digits, ``_`` and ``-``."""
    if not isinstance(durable, str) or _DURABLE.match(durable) is None:
        raise BadRequest(
            "durable must be 1-200 characters of letters, digits, '_' or '-'",
            details={"field": "durable"},
        )
    return durable


def check_subscribe_options(
    *,
    max_deliver: int,
    ack_wait: float,
    backoff: Sequence[float],
    concurrency: int,
    handler_timeout: float | None = None,
) -> tuple[float, ...]:
    """Validate subscribe options (``handler_timeout``: ``None`` or finite and > 0);
    returns the backoff as a tuple."""
    if not isinstance(max_deliver, int) or max_deliver < 1:
        raise BadRequest("max_deliver must be an integer >= 1", details={"field": "max_deliver"})
    if not isinstance(concurrency, int) or concurrency < 1:
        raise BadRequest("concurrency must be an integer >= 1", details={"field": "concurrency"})
    if not (isinstance(ack_wait, int | float) and math.isfinite(ack_wait) and ack_wait > 0):
        raise BadRequest(
            "ack_wait must be a positive number of seconds", details={"field": "ack_wait"}
        )
    if handler_timeout is not None and not (
        isinstance(handler_timeout, int | float)
        and not isinstance(handler_timeout, bool)
        and math.isfinite(handler_timeout)
        and handler_timeout > 0
    ):
        raise BadRequest(
            "handler_timeout must be None or a positive number of seconds",
            details={"field": "handler_timeout"},
        )
    delays = tuple(float(d) for d in backoff)
    if any(not math.isfinite(d) or d < 0 for d in delays):
        raise BadRequest("backoff delays must be finite and >= 0", details={"field": "backoff"})
    return delays


def backoff_delay(backoff: Sequence[float], attempt: int) -> float:
    """The delay before redelivering after failed ``attempt`` (1-based); the last
    value repeats, and an empty backoff means at once."""
    if not backoff:
        return 0.0
    return backoff[min(attempt, len(backoff)) - 1]


@lru_cache(maxsize=1024)
def subject_pattern(subject: str) -> re.Pattern[str]:
    """A compiled regex matching the literal subjects that ``subject`` selects."""
    parts = []
    for part in check_subscribe_subject(subject).split("."):
        if part == "*":
            parts.append(r"[^.]+")
        elif part == ">":
            parts.append(r".+")
        else:
            parts.append(re.escape(part))
    return re.compile(r"\.".join(parts) + r"\Z")


class NullLogger:
    """A :class:`ports.logger.Logger` that writes nothing (the default logger)."""

    __slots__ = ()

    def debug(self, msg: str, /, **tags: Any) -> None:
        """Discard."""

    def info(self, msg: str, /, **tags: Any) -> None:
        """Discard."""

    def warning(self, msg: str, /, **tags: Any) -> None:
        """Discard."""

    def warn(self, msg: str, /, **tags: Any) -> None:
        """Discard."""

    def error(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> None:
        """Discard."""

    def fatal(self, msg: str, /, *, exc: BaseException | None = None, **tags: Any) -> NoReturn:
        """Raise ``SystemExit(1)`` as the port says, writing nothing."""
        raise SystemExit(1)

    def bind(self, **tags: Any) -> NullLogger:
        """Itself."""
        return self


def describe(exc: BaseException) -> str:
    """A short description of ``exc`` for dead letters and logs: its type and message,
    redacted like a log line's error text (:mod:`adapters.redaction`) and capped.
    Never raises (an exception whose ``str()`` raises is described by its type alone)."""
    name = type(exc).__name__
    message = safe_str(exc)
    text = redact_error_text(f"{name}: {message}" if message else name)
    return text if len(text) <= 500 else text[:497] + "..."


def wire_size(body: bytes, headers: Mapping[str, str] | None) -> int:
    """The bytes the server counts against ``max_payload``: the header block as
    nats-py writes it (``NATS/1.0``, ``name: value`` lines, stripped) plus the body;
    no headers (``None`` or empty) means no header block, as nats-py sends it."""
    if not headers:
        return len(body)
    size = _HEADER_BLOCK_OVERHEAD + len(body)
    for key, value in headers.items():
        name = key.strip()
        if name:
            size += len(name.encode()) + len(value.strip().encode()) + _HEADER_LINE_OVERHEAD
    return size


def check_wire_size(
    subject: str, body: bytes, headers: Mapping[str, str] | None, limit: int
) -> None:
    """``BadRequest`` naming both sizes when the message would exceed ``limit``."""
    size = wire_size(body, headers)
    if size > limit:
        raise BadRequest(
            f"event of {size} bytes (headers and body) is larger than the server's "
            f"max payload of {limit} bytes",
            details={"subject": subject, "size": size, "max_payload": limit},
        )
