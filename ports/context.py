"""Request-scoped context (request_id, event_id, ...) on contextvars.

Domain code and the HTTP edge set it with :func:`bind_context`; adapters read it
(the logger writes it on every line, the publisher puts ``request_id`` in message
headers and the subscriber restores it for the handler). Each asyncio task runs in
a copy of its creator's context, so two concurrent requests never see each other's
values, and a value bound inside a task never leaks out of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

__all__ = ["bind_context", "current_context", "request_id", "REQUEST_ID"]

REQUEST_ID = "request_id"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("hexinfra_context", default=_EMPTY)


@contextmanager
def bind_context(**values: Any) -> Iterator[Mapping[str, Any]]:
    """Add ``values`` to the current context for the ``with`` block.

    Nested blocks see the union (inner values win); on exit the previous context
    is restored exactly, also when the block raises. ``None`` values are dropped.
    Yields the context in force inside the block.
    """
    merged = {**_context.get(), **{k: v for k, v in values.items() if v is not None}}
    view = MappingProxyType(merged)
    token = _context.set(view)
    try:
        yield view
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    """The context in force for this task: a read-only mapping, possibly empty."""
    return _context.get()


def request_id() -> str | None:
    """The current request id, or ``None`` outside a request."""
    value = _context.get().get(REQUEST_ID)
    return None if value is None else str(value)
