"""The SQLite fake's parameter typing: PostgreSQL's rules for a psycopg parameter
written to a column or compared with one.

psycopg sends each Python value with a type (``bool``, ``int``, ``float8``,
``numeric``, ``timestamptz``, ``uuid``, ``bytea``...) except ``str``, which goes as
*unknown* and is read by the column type's input function. PostgreSQL then refuses a
value of another type family: ``42804`` (datatype mismatch) when it is assigned
(``INSERT ... VALUES``, ``SET col =``), ``42883`` (no such operator) when it is
compared (``col = %s``, ``%s < col``, ``col IN (%s, ...)``); any value may be
assigned to a TEXT column. SQLite would take them all. :func:`placeholder_types`
finds the placeholders whose column is known (at prepare time, cached with the
statement); :func:`check_parameters` applies the rules before the statement runs.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, Literal

from ._sqlite_types import (
    ColumnType,
    Kind,
    SqlDataError,
    canonical,
    data_error,
    take_fault,
    unsupported,
)

__all__ = ["Use", "TypedPlaceholder", "check_parameters", "as_text"]

Use = Literal["assign", "compare"]
TypedPlaceholder = tuple[int, ColumnType, Use]
"""(placeholder position, the column's type, how the value meets the column)."""

_NUMBERS: Final = frozenset({"int", "float8", "numeric"})
_ACCEPTS: Final[dict[Kind, frozenset[str]]] = {
    "int4": _NUMBERS,
    "int8": _NUMBERS,
    "numeric": _NUMBERS,
    "bool": frozenset({"boolean"}),
    "text": frozenset(),
    "timestamptz": frozenset({"timestamptz", "timestamp", "date"}),
    "jsonb": frozenset(),
    "uuid": frozenset({"uuid"}),
    "bytea": frozenset({"bytea"}),
}
"""The parameter types (besides unknown) PostgreSQL takes for a column of each type."""


def _sent_type(value: Any) -> str | None:
    """The type psycopg sends ``value`` as; ``None`` for unknown (``str``) or a type
    this module does not judge."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float8"
    if isinstance(value, Decimal):
        return "numeric"
    if isinstance(value, datetime):
        return "timestamp" if value.tzinfo is None else "timestamptz"
    if isinstance(value, date):
        return "date"
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytea"
    return None


_NAMES: Final = {"int": "integer", "float8": "double precision", "timestamp": "timestamp"}


def check_parameters(values: Sequence[Any], typed: Sequence[TypedPlaceholder]) -> list[Any]:
    """``values`` as the fake binds them, or PostgreSQL's error for a value of the
    wrong type family. A number assigned to an integer column is rounded as
    PostgreSQL's cast rounds it; a string compared with a typed column is read as
    that type (its data error if it is not one) and bound in the stored form."""
    out = list(values)
    for position, ctype, use in typed:
        if position >= len(out):
            break  # a literal "?" (an operator) took a placeholder's place: judge nothing
        value = out[position]
        if value is None:
            continue
        if isinstance(value, str):
            # PostgreSQL reads the parameter when it binds it, whether or not a row
            # is ever compared or written.
            if ctype.kind == "bytea":
                out[position] = _bytea_input(value)
            elif ctype.kind != "text":
                # Compared, it is read as the column's type without its typmod (no
                # rounding to a NUMERIC's scale, no precision overflow), as PostgreSQL
                # types the parameter ``numeric``; assigned, it is coerced to the column.
                out[position] = _read_as(value, ctype, typmod=use == "assign")
            continue
        sent = _sent_type(value)
        if sent is None or sent in _ACCEPTS[ctype.kind]:
            if use == "compare" and sent in ("float8", "numeric") and _is_nan(value):
                # PostgreSQL orders NaN above every number and equal to itself only:
                # an integer column holds none, so infinity answers alike.
                if ctype.kind == "numeric":
                    raise unsupported("NaN compared with a NUMERIC column")
                out[position] = math.inf
            elif use == "assign" and sent in _NUMBERS:
                integral = ctype.kind in ("int4", "int8") and sent != "int"
                rounded = _rounded(value) if integral else value
                # As SQLite is given it (a Decimal as its text).
                bound = str(rounded) if isinstance(rounded, Decimal) else rounded
                out[position] = _read_as(bound, ctype)
            continue
        if use == "assign" and ctype.kind == "text":
            out[position] = as_text(value)  # its type's output function, as PostgreSQL
            continue
        theirs = _NAMES.get(sent, sent)
        if use == "assign":
            raise data_error(
                "42804", f"column is of type {ctype.pg_name} but expression is of type {theirs}"
            )
        raise data_error("42883", f"operator does not exist: {ctype.pg_name} = {theirs}")
    return out


def _read_as(value: Any, ctype: ColumnType, *, typmod: bool = True) -> Any:
    """``value`` in the stored form of ``ctype`` (PostgreSQL's data error if it is not
    one of its values); ``typmod=False``: of its type without precision and scale."""
    scale = -1 if ctype.scale is None or not typmod else ctype.scale
    precision = (ctype.precision or 0) if typmod else 0
    try:
        return canonical(value, ctype.kind, precision, scale)
    except SqlDataError as exc:
        take_fault()
        raise exc.error from None


def _is_nan(value: float | Decimal) -> bool:
    return value.is_nan() if isinstance(value, Decimal) else math.isnan(value)


def _rounded(value: float | Decimal) -> int | float:
    if isinstance(value, float):
        # float8 -> integer rounds half to even (rint); inf/nan stay for the range check.
        return round(value) if math.isfinite(value) else value
    if value.is_nan():
        raise data_error("0A000", "cannot convert NaN to integer")
    if value.is_infinite():
        raise data_error("0A000", "cannot convert infinity to integer")
    return int(value.to_integral_value(ROUND_HALF_UP))


def _bytea_input(text: str) -> bytes:
    """bytea's input function: ``\\x`` hex, or text without backslashes."""
    if text.startswith("\\x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise data_error("22023", "invalid hexadecimal digit") from None
    if "\\" in text:
        raise unsupported("bytea escape format input")
    return text.encode()


def as_text(value: Any) -> Any:
    """``value`` as PostgreSQL writes it to a TEXT column (the output function of the
    type psycopg sends it as; the session time zone is UTC, as the fake assumes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float8_text(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return "NaN"
        text = format(value, "f")
        return text.lstrip("-") if value == 0 else text
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return _timestamp_text(value.astimezone(UTC)) + "+00"
        return _timestamp_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return value


def _timestamp_text(value: datetime) -> str:
    text = f"{value.year:04d}-{value:%m-%d %H:%M:%S}"
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text


def _float8_text(value: float) -> str:
    """float8's output: the shortest exact digits, in exponent form below 1e-4 and
    from 1e15 (``1e+16``, ``1.5e-05``), ``NaN``, ``Infinity``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    shortest = Decimal(repr(value))
    digits = "".join(map(str, shortest.as_tuple().digits)).rstrip("0") or "0"
    exponent = shortest.adjusted()
    sign = "-" if value < 0 else ""
    if exponent < -4 or exponent >= 15:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return sign + format(abs(shortest).normalize(), "f")
