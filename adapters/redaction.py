"""The one redaction: what counts as a secret, and how it is hidden (stdlib only).

Every place text leaves the process goes through this module: log lines (values,
messages, error stacks), dead-letter headers and HTTP error bodies. ADR 0026.

- :func:`redact_text` hides secrets written inside text: URL userinfo
  (``scheme://user:pw@`` even when the password holds an unencoded ``@`` or ``/``,
  ``nats://TOKEN@host``), the value after a secret-looking name (keyword DSNs
  ``password=...`` and ``password='a b'``, query parameters ``?password=``,
  ``?access_token=``, ``api_key=``, ``"token": "..."``), whole ``Cookie:`` /
  ``Set-Cookie:`` values, and the credential after ``Bearer`` / ``Basic``. It is on
  the logger's hot path, so it tests cheap substrings before running a regex. Every
  pattern is linear in the text's length (text arrives from unauthenticated requests),
  and a text over :data:`MAX_TEXT` that needs redacting is written cut (ADR 0026).
- :func:`redact_error_text` is :func:`redact_text` plus the database driver texts
  that quote row values (``DETAIL: Failing row contains (...)``,
  ``Key (email)=(...)``, ``invalid input syntax for type bigint: "..."``,
  ``unnamed portal parameter $1 = '...'``): for exception messages and stacks.
- :func:`redact_value` cleans a structured value for a JSON line: mappings (values
  of secret-looking keys hidden, at any depth), sequences, header pairs (raw ASGI
  ``(b"x-api-key", b"...")`` tuples included), dataclass and attrs instances (as a
  dict of their fields), strings through :func:`redact_text`; ``str`` and ``list``
  subclasses too; cycles cut and size bounded by a :class:`ValueBudget`.
- :func:`redact_headers` keeps the shape it is given (a mapping or a list of pairs,
  ``str`` or ``bytes``) with secret header values hidden.
- :func:`safe_str` is ``str(value)`` that never raises.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any, Final, overload

from ports.logger import REDACTED, SECRET_KEY_PARTS

__all__ = [
    "REDACTED",
    "SECRET_NAME_PARTS",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_CHARS",
    "MAX_TEXT",
    "CUT",
    "TRUNCATED",
    "ValueBudget",
    "is_secret_name",
    "redact_text",
    "redact_error_text",
    "redact_value",
    "redact_headers",
    "safe_str",
]

MAX_DEPTH: Final = 16
TRUNCATED: Final = "[...]"

SECRET_NAME_PARTS: Final = (
    *SECRET_KEY_PARTS,
    "api_key",
    "access_key",
    "private_key",
    "passphrase",
    "pwd",
)
"""Parts that make a field, header or keyword name secret-looking (compared in lower
case, ``-`` read as ``_``: ``X-Api-Key``, ``private-key`` and ``Set-Cookie`` match)."""

_REDACTED_BYTES: Final = REDACTED.encode()

# -- names ---------------------------------------------------------------------------

_names: dict[str, bool] = {}
_NAMES_MAX: Final = 4096


def is_secret_name(name: str) -> bool:
    """Whether a key, field, header or parameter name looks secret (cached)."""
    known = _names.get(name)
    if known is not None:
        return known
    lowered = name.lower().replace("-", "_")
    secret = any(part in lowered for part in SECRET_NAME_PARTS)
    if len(_names) < _NAMES_MAX:
        _names[name] = secret
    return secret


# -- text ------------------------------------------------------------------------------

_SCHEME: Final = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://")
# After "scheme://": a user name (up to ':', then a password), or a token (up to '@').
_URL_USER: Final = re.compile(r"[^\s:/?#@\"'<>]*")
_URL_TOKEN: Final = re.compile(r"[^\s:/?#\"'<>]+")
_WHITESPACE: Final = re.compile(r"\s")
_REDACTED_AT: Final = REDACTED + "@"

MAX_TEXT: Final = 65536
"""A text longer than this (in characters) is redacted as its first ``MAX_TEXT`` +
1024 characters and written cut to ``MAX_TEXT`` - 64, ending in :data:`CUT` (ADR 0026)."""
CUT: Final = "[... cut]"
_CUT_KEEP: Final = MAX_TEXT - 64
_CUT_LOOKAHEAD: Final = 1024
USERINFO_WINDOW: Final = 256
"""How far after ``scheme://user:`` the ``@`` ending a password is looked for (the last
one before whitespace in that window); a password with no ``@`` in it runs to the last
``@`` before whitespace, however far."""


def _redact_urls(text: str) -> str:
    """URL userinfo hidden: ``scheme://user:[REDACTED]@`` (the password runs to the last
    ``@`` before whitespace within :data:`USERINFO_WINDOW`, so one holding ``@`` or
    ``/`` is hidden whole) and ``scheme://[REDACTED]@`` (a token, as NATS writes it).

    Linear in ``len(text)``: each ``scheme://`` costs at most the window, and the
    whitespace-free run searched past it is scanned once for all the URLs in it.
    """
    parts: list[str] = []
    done = 0  # text[:done] is in parts
    run_end = -1  # end of the whitespace-free run last scanned past a window ...
    run_at = -1  # ... and its last '@' (-1: none)
    size = len(text)
    for scheme in _SCHEME.finditer(text):
        start = scheme.end()
        if start <= done or text.startswith(_REDACTED_AT, start):
            continue
        colon = _URL_USER.match(text, start).end()  # type: ignore[union-attr]
        if colon < size and text[colon] == ":":
            value = colon + 1
            if text.startswith(_REDACTED_AT, value):
                continue
            window = min(size, value + USERINFO_WINDOW)
            space = _WHITESPACE.search(text, value, window)
            limit = space.start() if space is not None else window
            at = text.rfind("@", value, limit)
            if at < 0 and space is None and window < size:
                if run_end <= value:  # a new run: scan it once
                    space = _WHITESPACE.search(text, window)
                    run_end = space.start() if space is not None else size
                    run_at = text.rfind("@", window, run_end)
                at = run_at if run_at > value else -1
            if at < 0:
                continue
            parts.append(text[done:value])
            parts.append(_REDACTED_AT)
            done = at + 1
        else:
            token = _URL_TOKEN.match(text, start)
            if token is None:
                continue
            at = text.rfind("@", start, token.end())
            if at <= start:
                continue
            parts.append(text[done:start])
            parts.append(_REDACTED_AT)
            done = at + 1
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


_TEXT_PARTS: Final = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "api_key",
    "api-key",
    "apikey",
    "access_key",
    "access-key",
    "private_key",
    "private-key",
    "authorization",
    "credential",
)
_AUTH_SCHEMES: Final = r"(?:bearer|basic|digest|negotiate|ntlm|token)\s+"
# name=value, name: value, "name": "value", name='quoted value' where the name looks
# secret. A quoted value runs to its closing quote (a run of backslashes escapes the
# character after it, so doubled escapes as a repr writes them stay inside; a value
# quoted with \' or \" inside a repr runs to the same escaped quote), or to the end of
# the line if it has none; a bare one to the next space, quote, '&', ';' or ','. An
# auth scheme after the name is kept. Linear: the name is found by a lookahead and
# taken possessively, and a quoted value is read in exactly one way (atomic items: a
# whole run of backslashes and the character after it, or one other character).
_KEY_VALUE: Final = re.compile(
    r"(?i)((?<![\w.\-])(?=[\w.\-]*?(?:"
    + "|".join(re.escape(part) for part in _TEXT_PARTS)
    + r"))[\w.\-]*+[\"']?\s*+[=:](?!\s*(?:"
    + _AUTH_SCHEMES
    + r")?\[REDACTED\])\s*+(?:"
    + _AUTH_SCHEMES
    + r")?)(?:(?P<e>\\?)(?P<q>[\"'])(?>\\++[^\r\n]?|[^\\\r\n])*?"
    r"(?:(?P=e)(?P=q)|(?=[\r\n]|\Z))|[^\s\"'&;,]+)"
)
_COOKIE: Final = re.compile(
    r"(?i)((?<![\w\-])(?:set-)?cookie[\"']?\s*[:=](?!\s*\[REDACTED\])\s*)[^\r\n\"']+"
)
_COOKIE_REPLACEMENT: Final = rf"\1{REDACTED}"
# Bearer <credential> anywhere; Basic only before a base64-looking credential (so the
# English word "basic" before a lower-case word stays).
_AUTH: Final = re.compile(
    r"(?i)\b(bearer\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=\-]+"
    r"|\b(basic\s+)(?!\[REDACTED\])(?-i:(?![a-z]{1,15}\b))[A-Za-z0-9._~+/=\-]{4,}"
)


def _key_value(match: re.Match[str]) -> str:
    quote = match["q"]
    if quote:  # quoted, or quoted inside a repr (\'...\'): the same quotes around
        quote = match["e"] + quote
        return f"{match[1]}{quote}{REDACTED}{quote}"
    return f"{match[1]}{REDACTED}"


def _auth(match: re.Match[str]) -> str:
    return f"{match[1] or match[2]}{REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with every secret written inside it replaced by ``[REDACTED]``.

    Cheap when there is nothing to hide: a text with no ``:``, ``=`` and no space
    before ``earer`` / ``asic`` costs a few substring tests. The logger inlines
    the same pre-check (``_log_fields.merge_fields``, ``StructlogLogger``); keep
    them in step. Linear in the text's length; a text longer than :data:`MAX_TEXT`
    that needs redacting comes back cut, ending in :data:`CUT`.
    """
    if (
        ":" in text
        or "=" in text
        or (
            " " in text and ("earer" in text or "asic" in text or "EARER" in text or "ASIC" in text)
        )
    ):
        return _redact(text) if len(text) <= MAX_TEXT else _cut(text, _redact)
    return text


def _redact(text: str) -> str:
    """:func:`redact_text` without the length cap (the caller bounds ``text``)."""
    if ":" in text or "=" in text:
        lowered = text.lower()
        if "://" in text:
            text = _redact_urls(text)
        if "cookie" in lowered:
            text = _COOKIE.sub(_COOKIE_REPLACEMENT, text)
        if (
            "pass" in lowered
            or "token" in lowered
            or "secret" in lowered
            or "key" in lowered
            or "auth" in lowered
            or "pwd" in lowered
            or "credential" in lowered
        ):
            text = _KEY_VALUE.sub(_key_value, text)
        if "bearer" in lowered or "basic" in lowered:
            text = _AUTH.sub(_auth, text)
    elif " " in text and ("earer" in text or "asic" in text or "EARER" in text or "ASIC" in text):
        text = _AUTH.sub(_auth, text)  # "Bearer xyz" with no ':' or '=' around it
    return text


def _cut(text: str, redact: Callable[[str], str]) -> str:
    """A text over :data:`MAX_TEXT`: its start redacted with 1 kB of what follows in
    view (so a secret crossing the cut is hidden whole), then cut, ending in :data:`CUT`."""
    return redact(text[: MAX_TEXT + _CUT_LOOKAHEAD])[:_CUT_KEEP] + CUT


# PostgreSQL (and psycopg) texts that quote row or parameter values. PostgreSQL does not
# escape a quote inside the value it quotes: the value runs to the line's last quote.
_DETAIL_LINE: Final = re.compile(
    r"(?im)^([ \t]*(?:DETAIL|CONTEXT):[ \t]*)"
    r"(?:JSON data|Token \"|Array value|Missing \"|Unexpected|Expected).*$"
)
_FAILING_ROW: Final = re.compile(r"(Failing row contains )\(.*")
_QUOTED_INPUT: Final = re.compile(
    r"((?:invalid input syntax for(?: type)? [^:\"\r\n]{0,200}+|invalid input value for enum "
    r"[^:\"\r\n]{0,200}+"
    r"|malformed (?:array|record|range) literal|date/time field value out of range"
    r"|invalid (?:hexadecimal|base64) data|time zone|value):?\s*)\"[^\r\n]*\""
)
_PARAMETER: Final = re.compile(r"(\$\d+\s*=\s*)'(?:[^']|'')*'")
_ERROR_MARKERS: Final = ("DETAIL", "CONTEXT", "Key (", "Failing row", "invalid input", "$", "alue ")


def _key_equals(text: str) -> str:
    """``Key (cols)=(values)`` with the values hidden: on each line, from the first
    ``)=(`` after ``Key (`` to the end of the line (str methods: linear)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        key = line.find("Key (")
        if key >= 0:
            equals = line.find(")=(", key + 5)
            if equals >= 0:
                lines[i] = f"{line[: equals + 2]}({REDACTED})"
    return "\n".join(lines)


def redact_error_text(text: str) -> str:
    """:func:`redact_text` plus the driver texts that quote row values (for exception
    messages and stacks): the quoted values are replaced, the SQLSTATE-style wording,
    constraint, column and type names stay. Cut as :func:`redact_text` is."""
    return _redact_error(text) if len(text) <= MAX_TEXT else _cut(text, _redact_error)


def _redact_error(text: str) -> str:
    text = _redact(text)
    if any(marker in text for marker in _ERROR_MARKERS):
        if "Key (" in text:
            text = _key_equals(text)
        text = _FAILING_ROW.sub(rf"\1({REDACTED})", text)
        text = _QUOTED_INPUT.sub(rf'\1"{REDACTED}"', text)
        text = _PARAMETER.sub(rf"\1'{REDACTED}'", text)
        text = _DETAIL_LINE.sub(rf"\1{REDACTED}", text)
    return text


def safe_str(value: object) -> str:
    """``str(value)``, or ``<TypeName: str() failed>`` if that raises (never raises)."""
    try:
        text = str(value)
        return text if type(text) is str else "".join(text)
    except Exception:
        try:
            name = type(value).__name__
        except Exception:  # pragma: no cover - a type whose name cannot be read
            name = "object"
        return f"<{name}: str() failed>"


# -- structures ------------------------------------------------------------------------


def _name_of(raw: object) -> str | None:
    if type(raw) is str:
        return raw
    if type(raw) is bytes:
        return raw.decode("latin-1")
    return None


MAX_NODES: Final = 10_000
"""Containers and items one :class:`ValueBudget` lets through (one log call's tags)."""
MAX_CHARS: Final = 1_000_000
"""Characters of text one :class:`ValueBudget` lets through."""


class ValueBudget:
    """What :func:`redact_value` may still write: :data:`MAX_NODES` containers and
    items, :data:`MAX_CHARS` characters of text; beyond, values are ``"[...]"``. The
    logger shares one budget between the tags of a log call (ADR 0026), so a
    structure that shares or repeats itself cannot make a line of unbounded size."""

    __slots__ = ("chars", "nodes", "path")

    def __init__(self, nodes: int = MAX_NODES, chars: int = MAX_CHARS) -> None:
        self.nodes = nodes
        self.chars = chars
        self.path: set[int] = set()  # ids of the containers being walked (cycles)


def redact_value(value: Any, budget: ValueBudget | None = None) -> Any:
    """``value`` ready for a JSON line, secrets hidden at any depth.

    Strings (``str`` subclasses and ``StrEnum`` members too, as a plain ``str``) go
    through :func:`redact_text`. Mappings become dicts with ``str`` keys (values of
    secret-looking keys ``[REDACTED]``); lists, tuples, sets and deques (subclasses
    too) become lists, a ``(name, value)`` pair with a secret-looking name (a raw ASGI
    header, say) keeping its name only; named tuples, dataclass and attrs instances
    become a dict of their fields, treated as a mapping; an exception becomes its
    redacted ``str`` (:func:`redact_error_text`). A container met again inside itself
    (a cycle) and nesting deeper than :data:`MAX_DEPTH` are cut to ``"[...]"``, as is
    whatever exceeds ``budget`` (a fresh :class:`ValueBudget` when not given).
    Anything else is returned as is (the renderer writes it as its redacted ``str``).
    """
    cls = type(value)
    if cls is str:
        return redact_text(value)
    if cls is int or cls is float or cls is bool or value is None:
        return value
    return _walk(value, 0, budget)


_SEQUENCES: Final = (list, tuple, set, frozenset, deque)


def _walk(value: Any, depth: int, budget: ValueBudget | None) -> Any:
    cls = type(value)
    if cls is str or isinstance(value, str):
        if cls is not str:  # a subclass: orjson would write it untouched
            value = str.__str__(value) if isinstance(value, Enum) else safe_str(value)
        return _spend(value, budget, redact_text)
    if cls is int or cls is float or cls is bool or value is None:
        return value
    if isinstance(value, BaseException):
        return _spend(safe_str(value), budget, redact_error_text)
    inside = _inside(value, cls)
    if inside is None:
        return value
    if budget is None:
        budget = ValueBudget()
    budget.nodes -= 1
    key = id(value)
    if depth >= MAX_DEPTH or budget.nodes < 0 or key in budget.path:
        return TRUNCATED  # too deep, over budget, or a cycle
    budget.path.add(key)
    try:
        if inside is not value:  # (name, value) pairs
            return _redact_items(inside, depth, budget)
        return _redact_sequence(value, depth, budget)
    finally:
        budget.path.discard(key)


def _redact_sequence(value: Any, depth: int, budget: ValueBudget) -> list[Any]:
    if len(value) == 2 and isinstance(value, list | tuple):
        name = _name_of(value[0])
        if name is not None and is_secret_name(name):
            return [name, REDACTED]
    result = []
    for item in value:
        budget.nodes -= 1
        if budget.nodes < 0:
            result.append(TRUNCATED)
            break
        result.append(_walk(item, depth + 1, budget))
    return result


def _spend(text: str, budget: ValueBudget | None, redact: Callable[[str], str]) -> str:
    if budget is not None:
        budget.chars -= len(text)
        if budget.chars < 0:
            return TRUNCATED
    return redact(text)


def _inside(value: Any, cls: type) -> Any:
    """What a container holds: the value itself for a sequence written as a list,
    its (name, value) pairs for a mapping, named tuple, dataclass or attrs instance;
    None for anything else."""
    if cls is list or cls is tuple or cls is set or cls is frozenset:
        return value
    if cls is dict or isinstance(value, Mapping):
        return value.items()
    if isinstance(value, _SEQUENCES):
        fields = getattr(cls, "_fields", None) if isinstance(value, tuple) else None
        return value if fields is None else zip(fields, value, strict=False)
    return _fields_of(value)


def _redact_items(
    items: Iterable[tuple[Any, Any]], depth: int, budget: ValueBudget
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for k, v in items:
        budget.nodes -= 1
        if budget.nodes < 0:
            result[TRUNCATED] = TRUNCATED
            break
        key = k if type(k) is str else safe_str(k)
        result[key] = REDACTED if is_secret_name(key) else _walk(v, depth + 1, budget)
    return result


def _fields_of(value: Any) -> list[tuple[str, Any]] | None:
    """The (name, value) fields of a dataclass or attrs instance, else None."""
    cls = type(value)
    attrs_fields = getattr(cls, "__attrs_attrs__", None)
    if attrs_fields is not None:
        names = [str(getattr(a, "name", "")) for a in attrs_fields]
    elif dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
    else:
        return None
    return [(name, getattr(value, name, None)) for name in names]


@overload
def redact_headers(headers: Mapping[str, str]) -> dict[str, str]: ...
@overload
def redact_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]: ...
@overload
def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]: ...
def redact_headers(headers: Any) -> Any:
    """Headers with the values of secret-looking names (``authorization``, ``cookie``,
    ``set-cookie``, ``x-api-key``, ``private-key``...) hidden and the others run
    through :func:`redact_text`. A mapping gives a dict; pairs (raw ASGI
    ``[(b"name", b"value")]`` included) give a list of pairs of the same types."""
    if isinstance(headers, Mapping):
        return {
            name: REDACTED if is_secret_name(str(name)) else redact_text(str(value))
            for name, value in headers.items()
        }
    result: list[tuple[Any, Any]] = []
    for name, value in headers:
        text_name = _name_of(name) or safe_str(name)
        if isinstance(value, bytes | bytearray):
            hidden = (
                _REDACTED_BYTES
                if is_secret_name(text_name)
                else redact_text(bytes(value).decode("latin-1")).encode("latin-1", "replace")
            )
            result.append((name, hidden))
        else:
            shown = REDACTED if is_secret_name(text_name) else redact_text(safe_str(value))
            result.append((name, shown))
    return result
