"""Finished OpenTelemetry spans as an indented tree of text (name, kind, key attributes),
for tests to assert a trace's shape and for the docs to quote it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["render_span_tree", "statement", "attribute_text"]

KEYS: Final = (
    "http.request.method",
    "http.route",
    "url.path",
    "http.response.status_code",
    "db.system.name",
    "db.operation.name",
    "messaging.system",
    "messaging.operation.type",
    "messaging.destination.name",
    "messaging.consumer.group.name",
    "messaging.message.id",
    "messaging.batch.message_count",
    "hexinfra.attempt",
    "hexinfra.outcome",
)
"""The attributes shown, in this order, when a span has them."""


def statement(sql: str) -> str:
    """The head of a SQL statement: its keyword and target (``INSERT INTO orders``,
    ``SELECT pg_notify``, ``DELETE FROM hexinfra_inbox``)."""
    words = sql.split("(", 1)[0].split()
    keep = 3 if len(words) > 2 and words[1].upper() in ("INTO", "FROM") else 2
    return " ".join(words[:keep])


def attribute_text(value: object) -> str:
    """An attribute's value as text (a string as is, anything else as its repr)."""
    return value if isinstance(value, str) else repr(value)


def _line(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    shown = [f"{key}={attribute_text(attributes[key])}" for key in KEYS if key in attributes]
    query = attributes.get("db.query.text")
    if isinstance(query, str):
        shown.append(f'db.query.text="{statement(query)} ..."')
    return f"{span.name} [{span.kind.name}] " + " ".join(shown)


def render_span_tree(spans: Iterable[ReadableSpan]) -> str:
    """One line per span, children indented two spaces under their parent and ordered
    by start time; a span whose parent is not among ``spans`` is a root (roots in start
    order)."""
    spans = sorted(spans, key=lambda s: s.start_time or 0)
    ids = {s.context.span_id for s in spans}
    children: dict[int, list[ReadableSpan]] = {}
    roots: list[ReadableSpan] = []
    for span in spans:
        parent = span.parent
        if parent is None or parent.span_id not in ids:
            roots.append(span)
        else:
            children.setdefault(parent.span_id, []).append(span)
    lines: list[str] = []

    def walk(level: Sequence[ReadableSpan], depth: int) -> None:
        for span in level:
            lines.append("  " * depth + _line(span))
            walk(children.get(span.context.span_id, []), depth + 1)

    walk(roots, 0)
    return "\n".join(lines)
