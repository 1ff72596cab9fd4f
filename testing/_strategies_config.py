"""Hypothesis strategies for configuration maps and log secrets.

Re-exported by :mod:`testing.strategies`.
"""

from __future__ import annotations

import re
import string
from typing import Final

from hypothesis import strategies as st

from ports.config import FALSE_WORDS, TRUE_WORDS, normalize_key

__all__ = [
    "setting_names",
    "key_spellings",
    "config_texts",
    "config_maps",
    "int_texts",
    "float_texts",
    "bool_texts",
    "non_int_texts",
    "secret_texts",
]

_STRICT_INT: Final = re.compile(r"[ \t\r\n\f\v]*[+-]?[0-9]+[ \t\r\n\f\v]*")
_WORD: Final = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)


def setting_names() -> st.SearchStrategy[str]:
    """Setting names in dotted form: ``db``, ``database.url``, ``events.publish_retries``."""
    return st.lists(_WORD, min_size=1, max_size=3).map(".".join)


def key_spellings(name: str) -> st.SearchStrategy[str]:
    """Spellings of ``name`` that name the same setting (case, ``.``/``_``/``-``)."""
    parts = re.split(r"[._\-]", name)
    return st.tuples(
        st.lists(st.sampled_from("._-"), min_size=len(parts), max_size=len(parts)),
        st.lists(st.booleans(), min_size=len(parts), max_size=len(parts)),
    ).map(
        lambda seps_upper: "".join(
            (part.upper() if upper else part.lower()) + (sep if i < len(parts) - 1 else "")
            for i, (part, sep, upper) in enumerate(
                zip(parts, seps_upper[0], seps_upper[1], strict=True)
            )
        )
    )


def config_texts() -> st.SearchStrategy[str]:
    """Any text a setting may hold (what a process environment can carry: no NUL)."""
    return st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=40)


def config_maps(
    *, min_size: int = 0, max_size: int = 8, values: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[dict[str, str]]:
    """Maps of canonical variable names (``DATABASE_URL``) to text values."""
    return st.dictionaries(
        setting_names().map(normalize_key),
        values if values is not None else config_texts(),
        min_size=min_size,
        max_size=max_size,
    )


def _int_text(value: int, style: str) -> str:
    if style == "plus" and value >= 0:
        return f"+{value}"
    if style == "zero":
        return f"-0{-value}" if value < 0 else f"0{value}"
    if style == "spaces":
        return f" {value}\t"
    return str(value)


def int_texts() -> st.SearchStrategy[tuple[str, int]]:
    """``(text, value)``: ints written as an operator might (sign, zero padding, spaces)."""
    styles = st.sampled_from(["plain", "plus", "zero", "spaces"])
    return st.builds(lambda v, s: (_int_text(v, s), v), st.integers(), styles)


def float_texts() -> st.SearchStrategy[tuple[str, float]]:
    """``(text, value)``: finite and infinite floats as ``repr`` writes them, and ``%e``."""
    floats = st.floats(allow_nan=False)
    return st.one_of(
        floats.map(lambda f: (repr(f), f)),
        floats.filter(lambda f: abs(f) < 1e300).map(lambda f: (f"{f:.17e}", float(f"{f:.17e}"))),
        st.integers(-(10**15), 10**15).map(lambda i: (str(i), float(i))),
    )


def bool_texts() -> st.SearchStrategy[tuple[str, bool]]:
    """``(text, value)``: every boolean word, in random case."""
    words = [(w, True) for w in sorted(TRUE_WORDS)] + [(w, False) for w in sorted(FALSE_WORDS)]
    return st.tuples(st.sampled_from(words), st.randoms(use_true_random=False)).map(
        lambda p: (
            "".join(c.upper() if p[1].random() < 0.5 else c for c in p[0][0]),
            p[0][1],
        )
    )


def non_int_texts() -> st.SearchStrategy[str]:
    """Text that is not a base-10 integer (including near misses: ``1.0``, ``1_000``, ``٣``)."""
    near_misses = st.sampled_from(
        ["", " ", "1.0", "1_000", "1e3", "0x10", "٣", "+", "-", "1 2", "12abc", "inf", "²"]
    )
    return st.one_of(near_misses, config_texts()).filter(lambda t: not _STRICT_INT.fullmatch(t))


def secret_texts() -> st.SearchStrategy[str]:
    """Secret-like values: long enough (10+) never to appear in a log line by chance.

    Drawn from letters, digits and URL-safe punctuation, so they also fit in the
    password part of a URL.
    """
    alphabet = string.ascii_letters + string.digits + "-._~!$&*+;="
    return st.text(alphabet, min_size=10, max_size=32).filter(
        lambda s: sum(c.isalnum() for c in s) >= 6
    )
