"""Hypothesis strategies for events: JSON data, valid events, subjects, wire messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from ports.events import Event

__all__ = [
    "event_texts",
    "json_values",
    "event_data",
    "event_timestamps",
    "events",
    "subjects",
    "subject_filters",
    "wire_headers",
]

_NO_SURROGATES = st.characters(exclude_categories=["Cs"])
_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)


def event_texts(*, max_size: int = 24, allow_surrogates: bool = False) -> st.SearchStrategy[str]:
    """Texts an Event accepts for id/type/source/organization_id: any Unicode with a
    non-blank character (spaces, quotes, ``%``, newlines included)."""
    alphabet = st.characters() if allow_surrogates else _NO_SURROGATES
    return st.text(alphabet=alphabet, min_size=1, max_size=max_size).filter(str.strip)


def json_values(*, allow_surrogates: bool = False, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """JSON-compatible values: None, bools, integers of any size, finite floats,
    text, and lists/objects of those."""
    text = st.text(alphabet=st.characters() if allow_surrogates else _NO_SURROGATES, max_size=12)
    leaf = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
    )
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=max_leaves,
    )


def event_data(*, allow_surrogates: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """An Event's ``data``: a JSON object."""
    key = st.text(alphabet=st.characters() if allow_surrogates else _NO_SURROGATES, max_size=10)
    return st.dictionaries(key, json_values(allow_surrogates=allow_surrogates), max_size=5)


def event_timestamps() -> st.SearchStrategy[datetime]:
    """Aware datetimes (UTC or a fixed offset to the minute), years 1900-2200."""
    offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    return st.datetimes(
        min_value=datetime(1900, 1, 2),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC) | offsets,
    )


def events(
    *,
    types: st.SearchStrategy[str] | None = None,
    allow_surrogates: bool = False,
) -> st.SearchStrategy[Event]:
    """Valid :class:`~ports.events.Event` values, of ``types`` when given."""
    texts = event_texts(allow_surrogates=allow_surrogates)
    return st.builds(
        Event,
        type=types if types is not None else texts,
        source=texts,
        organization_id=texts,
        data=event_data(allow_surrogates=allow_surrogates),
        id=texts,
        timestamp=event_timestamps(),
    )


def subjects(*, max_tokens: int = 4) -> st.SearchStrategy[str]:
    """Literal subjects: 1..max_tokens dot-separated tokens, no wildcards."""
    return st.lists(_TOKEN, min_size=1, max_size=max_tokens).map(".".join)


def subject_filters(*, max_tokens: int = 4) -> st.SearchStrategy[str]:
    """Subscription subjects: tokens, ``*`` anywhere, ``>`` only at the end."""
    token = _TOKEN | st.just("*")
    body = st.lists(token, min_size=1, max_size=max_tokens)
    return st.tuples(body, st.booleans()).map(
        lambda parts: ".".join([*parts[0], ">"] if parts[1] else parts[0])
    )


def wire_headers() -> st.SearchStrategy[dict[str, str]]:
    """Arbitrary message headers, often with some CloudEvents names among them."""
    names = st.sampled_from(
        [
            "ce-specversion",
            "ce-id",
            "ce-type",
            "ce-source",
            "ce-time",
            "ce-organizationid",
            "ce-requestid",
            "Content-Type",
            "CE-ID",
            "X-Request-ID",
        ]
    ) | st.text(min_size=1, max_size=12)
    values = st.sampled_from(
        ["1.0", "0.3", "application/json", "application/cloudevents+json", "2030-01-01T00:00:00Z"]
    ) | st.text(max_size=20)
    return st.dictionaries(names, values, max_size=8)
