"""Request-scoped context (request_id, event_id, ...) on contextvars.

Domain code and the HTTP edge set it with :func:`bind_context`; adapters read it
(the logger writes it on every line, the publisher puts ``request_id`` in message
headers and the subscriber restores it for the handler). Each asyncio task runs in
a copy of its creator's context, so two concurrent requests never see each other's
values, and a value bound inside a task never leaks out of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Any

__all__ = ["bind_context", "current_context", "request_id", "REQUEST_ID"]

REQUEST_ID = "request_id"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("hexinfra_context", default=_EMPTY)


class bind_context:
    """Add ``values`` to the current context for the ``with`` block.

    Nested blocks see the union (inner values win); on exit the previous context
    is restored exactly, also when the block raises. ``None`` values are dropped.
    The ``with`` target is the context in force inside the block. A class rather
    than a generator: it sits on every event delivery and every request.
    """

    __slots__ = ("_token", "_values")

    def __init__(self, **values: Any) -> None:
        self._values = values
        self._token: Token[Mapping[str, Any]] | None = None

    def __enter__(self) -> Mapping[str, Any]:
        current = _context.get()
        values = self._values  # a fresh dict: ``**values`` made it for this instance
        if None in values.values():
            values = {key: value for key, value in values.items() if value is not None}
        view = MappingProxyType({**current, **values} if current else values)
        self._token = _context.set(view)
        return view

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _context.reset(self._token)
            self._token = None


def current_context() -> Mapping[str, Any]:
    """The context in force for this task: a read-only mapping, possibly empty."""
    return _context.get()


def request_id() -> str | None:
    """The current request id, or ``None`` outside a request."""
    value = _context.get().get(REQUEST_ID)
    return None if value is None else str(value)
