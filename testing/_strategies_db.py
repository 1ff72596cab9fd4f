"""Hypothesis strategies for SQL values and rows that PostgreSQL and SQLite both store
and return unchanged (no NUL in text, no surrogates, 64-bit integers, finite floats)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Context, Decimal
from typing import Any

import attrs
from hypothesis import strategies as st

__all__ = [
    "sql_text",
    "sql_integers",
    "sql_bigints",
    "sql_floats",
    "sql_scalars",
    "sql_identifiers",
    "sql_rows",
    "SubsetColumn",
    "subset_columns",
    "subset_values",
    "subset_datetimes",
]

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def sql_text(*, min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Unicode text a TEXT column keeps as is: no NUL (PostgreSQL refuses it), no
    lone surrogates (not encodable as UTF-8)."""
    return st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        min_size=min_size,
        max_size=max_size,
    )


def sql_integers() -> st.SearchStrategy[int]:
    """Values of an ``INTEGER`` column (32-bit on PostgreSQL)."""
    return st.integers(*INT32)


def sql_bigints() -> st.SearchStrategy[int]:
    """Values of a ``BIGINT`` column (64-bit)."""
    return st.integers(*INT64)


def sql_floats() -> st.SearchStrategy[float]:
    """Finite doubles (SQLite stores NaN as NULL; infinities differ between engines)."""
    return st.floats(allow_nan=False, allow_infinity=False)


def sql_scalars() -> st.SearchStrategy[Any]:
    """Any one parameter value both engines round-trip: NULL, bigint, text, float."""
    return st.one_of(st.none(), sql_bigints(), sql_text(), sql_floats())


def sql_identifiers() -> st.SearchStrategy[str]:
    """Lower-case identifiers, prefixed so that no reserved word can come out."""
    return st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).map(lambda s: f"x_{s}")


def sql_rows(columns: Mapping[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Rows (dicts) with one value drawn from ``columns[name]`` for every column."""
    return st.fixed_dictionaries(dict(columns))


# --- the documented SQL subset (ADR 0011): schemas and valid values -----------------


@attrs.frozen
class SubsetColumn:
    """A column of a generated table: ``kind`` is one of int4, int8, numeric, bool,
    text, timestamptz, jsonb, uuid (``precision``/``scale`` for numeric)."""

    name: str
    kind: str
    precision: int = 0
    scale: int = 0

    @property
    def sql_type(self) -> str:
        if self.kind == "numeric":
            return f"NUMERIC({self.precision},{self.scale})"
        return {
            "int4": "INTEGER",
            "int8": "BIGINT",
            "bool": "BOOLEAN",
            "text": "TEXT",
            "timestamptz": "TIMESTAMPTZ",
            "jsonb": "JSONB",
            "uuid": "UUID",
        }[self.kind]


_EXACT = Context(prec=100)
_KINDS = ("int4", "int8", "numeric", "bool", "text", "timestamptz", "jsonb", "uuid")


@st.composite
def _subset_column(draw: st.DrawFn, name: str) -> SubsetColumn:
    kind = draw(st.sampled_from(_KINDS))
    if kind != "numeric":
        return SubsetColumn(name, kind)
    precision = draw(st.integers(1, 30))
    return SubsetColumn(name, kind, precision, draw(st.integers(0, min(precision, 8))))


def subset_columns(*, max_size: int = 5) -> st.SearchStrategy[list[SubsetColumn]]:
    """1..``max_size`` columns named ``c0``, ``c1``... of types in the subset."""
    return st.integers(1, max_size).flatmap(
        lambda n: st.tuples(*(_subset_column(f"c{i}") for i in range(n))).map(list)
    )


def subset_datetimes() -> st.SearchStrategy[datetime]:
    """Aware datetimes (1900-2200) at whole-minute offsets within +-14 h."""
    offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
    return st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC) | offsets,
    )


_JSON_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_JSON_TEXT, inner, max_size=3),
    max_leaves=6,
)


def subset_values(column: SubsetColumn) -> st.SearchStrategy[Any]:
    """Valid parameter values for ``column`` as a service passes them (NULL included):
    NUMERIC values may carry one decimal place more than the scale (both engines
    round it); JSONB values are JSON text; text is lower-case ASCII so that every
    collation orders it alike."""
    kind = column.kind
    if kind == "int4":
        values: st.SearchStrategy[Any] = sql_integers()
    elif kind == "int8":
        values = sql_bigints()
    elif kind == "numeric":
        top = 10**column.precision - 1
        values = st.builds(
            lambda m, extra: Decimal(m).scaleb(-(column.scale + extra), context=_EXACT),
            st.integers(-top, top),
            st.integers(0, 1),
        )
    elif kind == "bool":
        values = st.booleans()
    elif kind == "text":
        values = st.text(alphabet="abcdefghij", max_size=8)
    elif kind == "timestamptz":
        values = subset_datetimes()
    elif kind == "jsonb":
        values = _JSON.map(json.dumps)
    else:
        values = st.uuids()
    return st.none() | values
