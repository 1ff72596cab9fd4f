"""The SQLite fake's column types: PostgreSQL's input rules, storage, converters.

Each column type of the documented subset is stored in SQLite in one canonical form
(written by the table's canonicalizing triggers, checked by a ``CHECK`` that raises
PostgreSQL's data error for a value PostgreSQL rejects) and read back as psycopg
returns it. See ``adapters.memory._sqlite`` and ADR 0011.

=============  ======================  =====================================
type           stored as               read back as
=============  ======================  =====================================
INTEGER        integer (int4 range)    ``int``
BIGINT         integer (int8 range)    ``int``
NUMERIC(p,s)   text, rounded to ``s``  ``Decimal`` with scale ``s``
BOOLEAN        0 / 1                   ``bool``
TEXT           text                    ``str``
TIMESTAMPTZ    ``YYYY-MM-DD HH:MM:SS.ffffff+00:00`` (UTC, sorts in time order)
                                       aware ``datetime`` (UTC)
JSONB          normalized JSON text    ``dict`` / ``list`` / scalar
UUID           canonical text          ``uuid.UUID``
BYTEA          blob                    ``bytes``
=============  ======================  =====================================
"""

from __future__ import annotations

import functools
import json
import math
import re
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any, Final, Literal, NoReturn

import attrs

from domain_errors import DomainError, InternalServerError

__all__ = [
    "Kind",
    "ColumnType",
    "SqlDataError",
    "Unsupported",
    "adapt_datetime",
    "install",
    "take_fault",
    "unsupported",
]

Kind = Literal["int4", "int8", "numeric", "bool", "text", "timestamptz", "jsonb", "uuid", "bytea"]

_PG_NAMES: Final[dict[Kind, str]] = {
    "int4": "integer",
    "int8": "bigint",
    "numeric": "numeric",
    "bool": "boolean",
    "text": "text",
    "timestamptz": "timestamp with time zone",
    "jsonb": "jsonb",
    "uuid": "uuid",
    "bytea": "bytea",
}


@attrs.frozen
class ColumnType:
    """A column's type in the subset; ``precision``/``scale`` for NUMERIC(p,s)."""

    kind: Kind
    precision: int | None = None
    scale: int | None = None

    @property
    def pg_name(self) -> str:
        return _PG_NAMES[self.kind]

    @property
    def decltype(self) -> str:
        """The SQLite declared type: its first word names the converter, the rest
        gives the affinity (TEXT keeps NUMERIC digits exact; no rowid alias)."""
        if self.kind == "numeric":
            suffix = "" if self.scale is None else f"_{self.precision}_{self.scale}"
            return f"HXNUM{suffix} TEXT"
        return {
            "int4": "INT4",
            "int8": "INT8",
            "bool": "BOOLEAN",
            "text": "TEXT",
            "timestamptz": "TIMESTAMPTZ TEXT",
            "jsonb": "JSONB TEXT",
            "uuid": "UUID TEXT",
            "bytea": "BLOB",
        }[self.kind]

    @property
    def collation(self) -> str | None:
        return {
            "numeric": "hx_numeric",
            "timestamptz": "hx_timestamptz",
            "uuid": "hx_uuid",
            "jsonb": "hx_jsonb",
        }.get(self.kind)

    def sql_args(self) -> str:
        """``'kind', p, s`` for the check and canonicalizing functions."""
        return f"'{self.kind}', {self.precision or 0}, {-1 if self.scale is None else self.scale}"


# --- faults: a user-defined function cannot raise a DomainError through sqlite3 -----


class SqlDataError(Exception):
    """Raised inside a user-defined function; recorded so that the caller can map the
    (generic) sqlite3 error to the PostgreSQL data error it stands for."""

    def __init__(self, error: DomainError) -> None:
        super().__init__(str(error))
        self.error = error


class Unsupported(InternalServerError):
    """SQL outside the subset the fake answers as PostgreSQL does."""


_FAULT: list[DomainError] = []
_EXACT: Final = Context(prec=2000, Emax=999_999, Emin=-999_999)
"""Decimal arithmetic without rounding (NUMERIC allows up to 1000 digits of precision)."""


def take_fault() -> DomainError | None:
    """The error a user-defined function raised during the last statement, if any."""
    return _FAULT.pop() if _FAULT else None


def _raise(error: DomainError) -> NoReturn:
    _FAULT.clear()
    _FAULT.append(error)
    raise SqlDataError(error)


_STATE_NAMES: Final = {
    "22P02": "InvalidTextRepresentation",
    "22003": "NumericValueOutOfRange",
    "22007": "InvalidDatetimeFormat",
    "22008": "DatetimeFieldOverflow",
    "22P05": "UntranslatableCharacter",
    "42883": "UndefinedFunction",
    "42804": "DatatypeMismatch",
    "22023": "InvalidParameterValue",
    "0A000": "FeatureNotSupported",
}


def data_error(sqlstate: str, text: str) -> InternalServerError:
    """The error PostgresDatabase raises for this SQLSTATE (details for operators)."""
    return InternalServerError(
        f"database error {_STATE_NAMES.get(sqlstate, 'DataError')} (SQLSTATE {sqlstate}): {text}",
        details={"sqlstate": sqlstate},
        public_details=False,
    )


def unsupported(construct: str) -> Unsupported:
    return Unsupported(
        f"SqliteDatabase does not support {construct} (outside the documented subset)",
        details={"reason": "unsupported_sql", "construct": construct},
    )


def _fail(sqlstate: str, text: str) -> NoReturn:
    _raise(data_error(sqlstate, text))


def _fail_unsupported(construct: str) -> NoReturn:
    _raise(unsupported(construct))


# --- parsing values as PostgreSQL's input functions do ------------------------------

_INT_TEXT: Final = re.compile(r"\s*[+-]?\d+\s*")
_NUM_TEXT: Final = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_RANGES: Final = {"int4": (-(2**31), 2**31 - 1), "int8": (-(2**63), 2**63 - 1)}
_BOOL_WORDS: Final = {
    **dict.fromkeys(("t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"), 1),
    **dict.fromkeys(("f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"), 0),
}
_TS_SPECIAL: Final = frozenset(
    {"now", "today", "tomorrow", "yesterday", "epoch", "infinity", "-infinity", "allballs"}
)
_TS_SHAPE: Final = re.compile(r"\s*\d{4}-\d{1,2}-\d{1,2}([ T].*)?\s*")


def _integer(value: Any, kind: Kind) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        result = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            _fail("22003", f"{_PG_NAMES[kind]} out of range")
        if value != int(value):
            _fail_unsupported(f"a fractional number in an {_PG_NAMES[kind].upper()} column")
        result = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value):
        result = int(value)
    else:
        _fail("22P02", f"invalid input syntax for type {_PG_NAMES[kind]}")
    low, high = _RANGES[kind]
    if not low <= result <= high:
        _fail("22003", f"{_PG_NAMES[kind]} out of range")
    return result


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        _fail("22P02", "invalid input syntax for type numeric")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail_unsupported("NaN or infinity in a NUMERIC column")
        return Decimal(repr(value))
    if isinstance(value, str):
        if _NUM_TEXT.fullmatch(value):
            return _plain(Decimal(value.strip()))
        if value.strip().lower() in ("nan", "infinity", "-infinity", "inf", "-inf", "+inf"):
            _fail_unsupported("NaN or infinity in a NUMERIC column")
    _fail("22P02", "invalid input syntax for type numeric")


def _plain(value: Decimal) -> Decimal:
    """PostgreSQL's display scale for an input: ``1e2`` is ``100``, ``1.50`` keeps two."""
    if value.as_tuple().exponent > 0:  # type: ignore[operator]
        value = value.quantize(Decimal(1), context=_EXACT)
    return value if value != 0 or not value.is_signed() else abs(value)


_INFINITIES: Final = frozenset({"infinity", "+infinity", "-infinity", "inf", "+inf", "-inf"})


def _numeric(value: Any, precision: int, scale: int) -> Decimal:
    infinite = (isinstance(value, float) and math.isinf(value)) or (
        isinstance(value, str) and value.strip().lower() in _INFINITIES
    )
    if infinite and precision:  # NUMERIC(p,s) holds no infinity; NUMERIC would
        _fail("22003", "numeric field overflow")
    number = _decimal(value)
    if scale < 0:
        return number
    try:
        rounded = number.quantize(Decimal(1).scaleb(-scale), ROUND_HALF_UP, _EXACT)
    except InvalidOperation:
        _fail("22003", "numeric field overflow")
    if precision and rounded.adjusted() >= precision - scale and rounded != 0:
        _fail("22003", "numeric field overflow")
    return rounded if rounded != 0 else abs(rounded)


def _bool(value: Any) -> int:
    if isinstance(value, int) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _BOOL_WORDS:
            return _BOOL_WORDS[word]
    _fail("22P02", "invalid input syntax for type boolean")


def parse_timestamptz(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in _TS_SPECIAL:
            _fail_unsupported("special timestamp inputs (now, today, infinity...)")
        if not _TS_SHAPE.fullmatch(text):
            _fail("22007", "invalid input syntax for type timestamp with time zone")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            _fail("22008", "date/time field value out of range")
    else:
        _fail("22007", "invalid input syntax for type timestamp with time zone")
    # A value without an offset is read in the session time zone: UTC in the fake.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def adapt_datetime(value: datetime) -> str:
    """The stored form of a timestamp: fixed-width UTC text, so text order is time order."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


def _json_reject(_: str) -> NoReturn:
    _fail("22P02", "invalid input syntax for type json")


def _json_text(value: Any) -> str:
    if not isinstance(value, str):
        _fail("22P02", "invalid input syntax for type json")
    try:
        parsed = json.loads(value, parse_float=Decimal, parse_constant=_json_reject)
    except (ValueError, RecursionError):
        _fail("22P02", "invalid input syntax for type json")
    return _json_dump(parsed)


def _json_value(text: str) -> str:
    """The key jsonb compares by: its normal form with every number at its value
    (``1``, ``1.0`` and ``1e0`` are equal in jsonb, though it prints them apart)."""
    parsed = json.loads(text, parse_float=Decimal, parse_int=Decimal, parse_constant=_json_reject)
    return _json_dump(_by_value(parsed))


def _by_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    if isinstance(value, Decimal):
        return value.normalize() if value != 0 else Decimal(0)
    return value


def _json_dump(value: Any) -> str:
    """jsonb's normal form: keys by length then text, last duplicate wins, PG spacing."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        return "{" + ", ".join(f"{_json_str(k)}: {_json_dump(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_json_dump(v) for v in value) + "]"
    if isinstance(value, str):
        return _json_str(value)
    if isinstance(value, Decimal):
        return format(_plain(value), "f")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_str(text: str) -> str:
    if "\x00" in text:
        _fail("22P05", "unsupported Unicode escape sequence")
    try:
        text.encode()
    except UnicodeEncodeError:
        _fail("22P02", "invalid input syntax for type json")
    return json.dumps(text, ensure_ascii=False)


def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, str):
        with_braces = value.strip()
        text = with_braces[1:-1] if with_braces[:1] == "{" and with_braces[-1:] == "}" else value
        if re.fullmatch(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}", text):
            return uuid.UUID(text.replace("-", ""))
    _fail("22P02", "invalid input syntax for type uuid")


def canonical(value: Any, kind: str, precision: int, scale: int) -> Any:
    """The stored form of ``value`` in a column of this type (raises PG's data error)."""
    if value is None:
        return None
    if kind in ("int4", "int8"):
        return _integer(value, kind)  # type: ignore[arg-type]
    if kind == "numeric":
        return str(_numeric(value, precision, scale))
    if kind == "bool":
        return _bool(value)
    if kind == "timestamptz":
        return adapt_datetime(parse_timestamptz(value))
    if kind == "jsonb":
        return _json_text(value)
    if kind == "uuid":
        return str(_uuid(value))
    if kind == "bytea" and not isinstance(value, bytes):
        _fail_unsupported("a non-bytes value in a BYTEA column (pass bytes)")
    if kind == "text" and not isinstance(value, str | bytes):
        return str(value)
    return value


def _check(value: Any, kind: str, precision: int, scale: int) -> int:
    canonical(value, kind, precision, scale)
    return 1


# --- reading: sqlite3 converters (by declared type or by column-name hint) ---------


def _read_numeric(scale: int | None) -> Callable[[bytes], Decimal]:
    def convert(raw: bytes) -> Decimal:
        value = Decimal(raw.decode())
        if scale is None:
            return _plain(value)
        return value.quantize(Decimal(1).scaleb(-scale), ROUND_HALF_UP, _EXACT)

    return convert


def _read_timestamptz(raw: bytes) -> datetime:
    text = raw.decode()
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _read_bool(raw: bytes) -> bool:
    word = raw.decode().strip().lower()
    return bool(_BOOL_WORDS.get(word, 1 if word not in ("0", "0.0", "") else 0))


_CONVERTERS: Final[dict[str, Callable[[bytes], Any]]] = {
    "BOOLEAN": _read_bool,
    "BOOL": _read_bool,
    "HXBOOL": _read_bool,
    "TIMESTAMPTZ": _read_timestamptz,
    "HXTS": _read_timestamptz,
    "HXNUM": _read_numeric(None),
    "HXDEC": _read_numeric(None),
    "JSONB": lambda raw: json.loads(raw.decode()),
    "HXJSON": lambda raw: json.loads(raw.decode()),
    "UUID": lambda raw: uuid.UUID(raw.decode()),
    "HXUUID": lambda raw: uuid.UUID(raw.decode()),
}


@functools.cache
def register_numeric(precision: int, scale: int) -> None:
    """The converter of ``NUMERIC(p,s)`` columns (process-wide, by name)."""
    sqlite3.register_converter(f"HXNUM_{precision}_{scale}", _read_numeric(scale))


@functools.cache
def _register_converters() -> None:
    for name, converter in _CONVERTERS.items():
        sqlite3.register_converter(name, converter)


# --- collations and functions on the connection --------------------------------------


def _key(parse: Callable[[str], Any]) -> Callable[[str], tuple[int, Any]]:
    def key(text: str) -> tuple[int, Any]:
        try:
            return (0, parse(text))
        except (SqlDataError, ValueError, InvalidOperation, ArithmeticError):
            _FAULT.clear()
            return (1, text)

    return key


def _collation(parse: Callable[[str], Any]) -> Callable[[str, str], int]:
    key = _key(parse)

    def compare(a: str, b: str) -> int:
        ka, kb = key(a), key(b)
        return (ka > kb) - (ka < kb)

    return compare


class _ExactSum:
    """``sum`` of BIGINT or NUMERIC: exact, with the largest input scale (as PostgreSQL)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        if value is None:
            return
        number = Decimal(value) if isinstance(value, int) else Decimal(str(value))
        self.total = number if self.total is None else _EXACT.add(self.total, number)

    def finalize(self) -> str | None:
        return None if self.total is None else str(self.total)


def _now() -> str:
    return adapt_datetime(datetime.now(UTC))


def _cast(value: Any, kind: str, precision: int, scale: int) -> Any:
    if value is None:
        return None
    if kind == "text":
        return value if isinstance(value, str) else str(value)
    return canonical(value, kind, precision, scale)


def _identity_counter() -> Callable[[str], int]:
    """``GENERATED ... AS IDENTITY``: one counter per ``table.column`` and connection,
    not rolled back (a rolled-back insert leaves a gap, as a PostgreSQL sequence does)."""
    counters: dict[str, int] = {}

    def next_value(key: str) -> int:
        counters[key] = value = counters.get(key, 0) + 1
        return value

    return next_value


def install(conn: sqlite3.Connection) -> None:
    """Register the converters, collations and functions the fake's SQL relies on."""
    _register_converters()
    conn.create_collation("hx_numeric", _collation(lambda t: Decimal(t.strip())))
    conn.create_collation("hx_timestamptz", _collation(parse_timestamptz))
    conn.create_collation("hx_uuid", _collation(_uuid))
    conn.create_collation("hx_jsonb", _collation(_json_value))
    conn.create_function("hx_check", 4, _check, deterministic=True)
    conn.create_function("hx_canon", 4, canonical, deterministic=True)
    conn.create_function("hx_cast", 4, _cast, deterministic=True)
    conn.create_function("hx_now", 0, _now)
    conn.create_function("hx_identity", 1, _identity_counter())
    conn.create_aggregate("hx_sum_exact", 1, _ExactSum)  # type: ignore[arg-type]


def _hint_decimal(value: Any) -> Decimal:
    if isinstance(value, float):
        return Decimal(repr(value))
    return _plain(Decimal(value)) if isinstance(value, int) else Decimal(str(value))


def _hint_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _hint_integer(kind: Kind) -> Callable[[Any], int]:
    low, high = _RANGES[kind]

    def check(value: Any) -> int:
        # SQLite widens an overflowing product to a float; PostgreSQL raises.
        if isinstance(value, int) and low <= value <= high:
            return value
        raise data_error("22003", f"{_PG_NAMES[kind]} out of range")

    return check


HINTS: Final[dict[str, Callable[[Any], Any]]] = {
    "HXINT4": _hint_integer("int4"),
    "HXINT8": _hint_integer("int8"),
    "HXDEC": _hint_decimal,
    "HXBOOL": lambda value: bool(value) if isinstance(value, int | float) else value,
    "HXTS": lambda value: _read_timestamptz(str(value).encode()),
    "HXJSON": _hint_json,
    "HXUUID": lambda value: uuid.UUID(str(value)),
}
"""Converters of result columns by position (a value, never None, to its type)."""
