"""Log record rules shared by every Logger implementation (stdlib only).

StructlogLogger and testing's RecordingLogger both build their records with these
functions, so that the logger contract (reserved fields, redaction, error capture,
levels) holds the same way for the real adapter and the fake.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Final

from domain_errors import ConfigurationError
from ports.logger import LEVELS, REDACTED, RESERVED_FIELDS, SECRET_KEY_PARTS

__all__ = [
    "LEVEL_NUMBERS",
    "level_number",
    "key_kind",
    "PLAIN",
    "RESERVED",
    "SECRET",
    "redact_text",
    "clean_value",
    "MAX_DEPTH",
    "TRUNCATED",
    "merge_fields",
    "clean_fields",
    "error_fields",
    "current_exception",
]

LEVEL_NUMBERS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "fatal": 50}
_LEVEL_ALIASES: Final = {"warn": "warning", "critical": "fatal"}

MAX_DEPTH: Final = 16
TRUNCATED: Final = "[...]"

PLAIN: Final = 0
RESERVED: Final = 1
SECRET: Final = 2

# scheme://user:password@host -> scheme://user:[REDACTED]@host. The password runs to
# the last "@" before whitespace, so a password holding "@" or "/" is still hidden.
_URL_PASSWORD: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):[^\s]*@")
_URL_REPLACEMENT: Final = rf"\1:{REDACTED}@"
# scheme://TOKEN@host (userinfo without a colon, as NATS token URLs are written).
_URL_TOKEN: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)(?!\[REDACTED\])[^\s:/?#@]+@")
_URL_TOKEN_REPLACEMENT: Final = rf"\1{REDACTED}@"
_TEXT_SECRET_PARTS: Final = (*SECRET_KEY_PARTS, "api-key", "access_token", "pwd")
# name=value, name: value, "name": "value" where the name looks secret; the value runs
# to the next space, quote, '&', ';' or ','.
_KEY_VALUE: Final = re.compile(
    r"(?i)([\w.\-]*(?:"
    + "|".join(re.escape(part) for part in _TEXT_SECRET_PARTS)
    + r")[\w.\-]*[\"']?\s*[=:]\s*[\"']?)(?!\[REDACTED\]|(?:bearer|basic)\s)[^\s\"'&;,]+"
)
_KEY_VALUE_REPLACEMENT: Final = rf"\1{REDACTED}"
_AUTH_SCHEME: Final = re.compile(r"(?i)\b(bearer|basic)\s+(?!\[REDACTED\])[A-Za-z0-9._~+/=\-]+")
_AUTH_REPLACEMENT: Final = rf"\1 {REDACTED}"

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
    lowered = key.lower()
    if any(part in lowered for part in SECRET_KEY_PARTS):
        kind = SECRET
    elif key in RESERVED_FIELDS:
        kind = RESERVED
    else:
        kind = PLAIN
    if len(_kinds) < _KINDS_MAX:
        _kinds[key] = kind
    return kind


def redact_text(text: str) -> str:
    """``text`` with secrets replaced by ``[REDACTED]``: the password or token of every
    URL (``scheme://user:pw@``, ``nats://TOKEN@``), the value after a secret-looking
    name (``password=...``, ``api_key: ...``, ``?access_token=...``) and the credential
    after ``Bearer`` / ``Basic``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(_URL_REPLACEMENT, text)
        text = _URL_TOKEN.sub(_URL_TOKEN_REPLACEMENT, text)
    if "earer" in text or "asic " in text:
        text = _AUTH_SCHEME.sub(_AUTH_REPLACEMENT, text)
    if "=" in text or ":" in text:
        lowered = text.lower()
        if any(part in lowered for part in _TEXT_SECRET_PARTS):
            text = _KEY_VALUE.sub(_KEY_VALUE_REPLACEMENT, text)
    return text


def clean_value(value: Any, _depth: int = 0) -> Any:
    """``value`` with URL passwords and secret-looking keys (at any depth) redacted.

    Mappings become dicts with str keys, tuples and sets lists; nesting deeper than
    :data:`MAX_DEPTH` (a cycle, say) is cut and written as ``"[...]"``.
    """
    cls = type(value)
    if cls is str:
        return redact_text(value) if "://" in value else value
    container = cls is list or cls is tuple or cls is set or cls is frozenset
    if _depth >= MAX_DEPTH and (container or isinstance(value, Mapping)):
        return TRUNCATED
    if cls is dict or isinstance(value, Mapping):
        return {
            str(k): (REDACTED if key_kind(str(k)) == SECRET else clean_value(v, _depth + 1))
            for k, v in value.items()
        }
    if container:
        return [clean_value(v, _depth + 1) for v in value]
    return value


def merge_fields(target: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Add ``fields`` to ``target``: reserved names as ``tag_<name>``, secrets redacted."""
    kinds = _kinds
    for key, value in fields.items():
        kind = kinds.get(key)
        if kind is None:
            kind = key_kind(key)
        if kind == PLAIN:
            cls = type(value)
            if cls is str:
                target[key] = redact_text(value) if "://" in value else value
            elif cls is int or cls is float or cls is bool or value is None:
                target[key] = value
            else:
                target[key] = clean_value(value)
        elif kind == SECRET:
            target[key] = REDACTED
        else:
            target[f"tag_{key}"] = clean_value(value)


def clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict of ``fields`` after :func:`merge_fields`."""
    result: dict[str, Any] = {}
    merge_fields(result, fields)
    return result


def current_exception() -> BaseException | None:
    """The exception being handled by the caller (inside ``except``), if any."""
    return sys.exc_info()[1]


def error_fields(exc: BaseException) -> dict[str, str]:
    """``{type, message, stack}`` for ``exc``, URL passwords redacted."""
    stack = "".join(traceback.format_exception(exc))
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ raises is still logged
        message = "<str() failed>"
    return {
        "type": type(exc).__qualname__,
        "message": redact_text(message),
        "stack": redact_text(stack),
    }
