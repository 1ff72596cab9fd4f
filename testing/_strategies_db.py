"""Hypothesis strategies for SQL values and rows that PostgreSQL and SQLite both store
and return unchanged (no NUL in text, no surrogates, 64-bit integers, finite floats)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "sql_text",
    "sql_integers",
    "sql_bigints",
    "sql_floats",
    "sql_scalars",
    "sql_identifiers",
    "sql_rows",
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
