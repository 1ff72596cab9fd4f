"""The one redaction: what counts as a secret, and how it is hidden (stdlib only).

Every place text leaves the process goes through this module: log lines (values,
messages, error stacks), dead-letter headers and HTTP error bodies. ADR 0026.

- :func:`redact_text` hides secrets written inside text: URL userinfo
  (``scheme://user:pw@`` even when the password holds an unencoded ``@`` or ``/``,
  ``nats://TOKEN@host``), the value after a secret-looking name (keyword DSNs
  ``password=...`` and ``password='a b'``, query parameters ``?password=``,
  ``?access_token=``, ``api_key=``, ``"token": "..."``), whole ``Cookie:`` /
  ``Set-Cookie:`` values, and the credential after ``Bearer`` / ``Basic``. It is on
  the logger's hot path, so it tests cheap substrings before running a regex.
- :func:`redact_error_text` is :func:`redact_text` plus the database driver texts
  that quote row values (``DETAIL: Failing row contains (...)``,
  ``Key (email)=(...)``, ``invalid input syntax for type bigint: "..."``,
  ``unnamed portal parameter $1 = '...'``): for exception messages and stacks.
- :func:`redact_value` cleans a structured value for a JSON line: mappings (values
  of secret-looking keys hidden, at any depth), sequences, header pairs (raw ASGI
  ``(b"x-api-key", b"...")`` tuples included), dataclass and attrs instances (as a
  dict of their fields), strings through :func:`redact_text`.
- :func:`redact_headers` keeps the shape it is given (a mapping or a list of pairs,
  ``str`` or ``bytes``) with secret header values hidden.
- :func:`safe_str` is ``str(value)`` that never raises.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, overload

from ports.logger import REDACTED, SECRET_KEY_PARTS

__all__ = [
    "REDACTED",
    "SECRET_NAME_PARTS",
    "MAX_DEPTH",
    "TRUNCATED",
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

_SCHEME: Final = r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://"
# scheme://user:password@host: the password runs to the LAST "@" before whitespace, so
# one holding "@" or "/" is hidden whole.
_URL_PASSWORD: Final = re.compile(rf"({_SCHEME}[^\s:/?#@\"'<>]*):(?!\[REDACTED\]@)[^\s]*@")
_URL_PASSWORD_REPLACEMENT: Final = rf"\1:{REDACTED}@"
# scheme://TOKEN@host (userinfo without a colon, as NATS token URLs are written).
_URL_TOKEN: Final = re.compile(rf"({_SCHEME})(?!\[REDACTED\]@)[^\s:/?#\"'<>]+@")
_URL_TOKEN_REPLACEMENT: Final = rf"\1{REDACTED}@"

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
# secret. A quoted value runs to its closing quote (backslash escapes allowed, doubled
# ones too, as a repr writes them; a value quoted with \' or \" inside a repr runs to
# the same escaped quote); a bare one to the
# next space, quote, '&', ';' or ','. An auth scheme after the name is kept.
_KEY_VALUE: Final = re.compile(
    r"(?i)((?<![\w.\-])[\w.\-]*?(?:"
    + "|".join(re.escape(part) for part in _TEXT_PARTS)
    + r")[\w.\-]*[\"']?\s*[=:](?!\s*(?:"
    + _AUTH_SCHEMES
    + r")?\[REDACTED\])\s*(?:"
    + _AUTH_SCHEMES
    + r")?)(?:(?P<e>\\?)(?P<q>[\"'])(?:\\+[\"']|\\.|[^\r\n])*?(?P=e)(?P=q)|[^\s\"'&;,]+)"
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
    them in step.
    """
    if ":" in text or "=" in text:
        lowered = text.lower()
        if "://" in text:
            text = _URL_PASSWORD.sub(_URL_PASSWORD_REPLACEMENT, text)
            if "@" in text:
                text = _URL_TOKEN.sub(_URL_TOKEN_REPLACEMENT, text)
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


# PostgreSQL (and psycopg) texts that quote row or parameter values. PostgreSQL does not
# escape a quote inside the value it quotes: the value runs to the line's last quote.
_DETAIL_LINE: Final = re.compile(
    r"(?im)^(\s*(?:DETAIL|CONTEXT):\s*)"
    r"(?:JSON data|Token \"|Array value|Missing \"|Unexpected|Expected).*$"
)
_KEY_EQUALS: Final = re.compile(r"(Key \(.*?\)=)\(.*")
_FAILING_ROW: Final = re.compile(r"(Failing row contains )\(.*")
_QUOTED_INPUT: Final = re.compile(
    r"((?:invalid input syntax for(?: type)? [^:\r\n]*|invalid input value for enum [^:\r\n]*"
    r"|malformed (?:array|record|range) literal|date/time field value out of range"
    r"|invalid (?:hexadecimal|base64) data|time zone|value):?\s*)\"[^\r\n]*\""
)
_PARAMETER: Final = re.compile(r"(\$\d+\s*=\s*)'(?:[^']|'')*'")
_ERROR_MARKERS: Final = ("DETAIL", "CONTEXT", "Key (", "Failing row", "invalid input", "$", "alue ")


def redact_error_text(text: str) -> str:
    """:func:`redact_text` plus the driver texts that quote row values (for exception
    messages and stacks): the quoted values are replaced, the SQLSTATE-style wording,
    constraint, column and type names stay."""
    text = redact_text(text)
    if any(marker in text for marker in _ERROR_MARKERS):
        text = _KEY_EQUALS.sub(rf"\1({REDACTED})", text)
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


def redact_value(value: Any, _depth: int = 0) -> Any:
    """``value`` ready for a JSON line, secrets hidden at any depth.

    Strings go through :func:`redact_text`. Mappings become dicts with ``str`` keys
    (values of secret-looking keys ``[REDACTED]``); tuples, lists and sets become
    lists, a ``(name, value)`` pair with a secret-looking name (a raw ASGI header,
    say) keeping its name only; dataclass and attrs instances become a dict of their
    fields, treated as a mapping; an exception becomes its redacted ``str``
    (:func:`redact_error_text`). Nesting deeper than :data:`MAX_DEPTH` (a cycle)
    is cut to ``"[...]"``. Anything else is returned as is (the renderer writes it
    as its redacted ``str``).
    """
    cls = type(value)
    if cls is str:
        return redact_text(value)
    if cls is int or cls is float or cls is bool or value is None:
        return value
    container = cls is list or cls is tuple or cls is set or cls is frozenset
    if container or isinstance(value, Mapping):
        if _depth >= MAX_DEPTH:
            return TRUNCATED
        if container:
            if len(value) == 2 and cls is not set and cls is not frozenset:
                name = _name_of(value[0])
                if name is not None and is_secret_name(name):
                    return [name, REDACTED]
            return [redact_value(v, _depth + 1) for v in value]
        return _redact_items(value.items(), _depth)
    if isinstance(value, BaseException):
        return redact_error_text(safe_str(value))
    fields = _fields_of(value)
    if fields is not None:
        if _depth >= MAX_DEPTH:
            return TRUNCATED
        return _redact_items(fields, _depth)
    return value


def _redact_items(items: Iterable[tuple[Any, Any]], depth: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for k, v in items:
        key = k if type(k) is str else safe_str(k)
        result[key] = REDACTED if is_secret_name(key) else redact_value(v, depth + 1)
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
