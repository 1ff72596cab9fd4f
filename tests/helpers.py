"""Small helpers shared by our own tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["wait_until", "wait_until_async"]


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 5.0, interval: float = 0.005, what: str = ""
) -> None:
    """Wait (without blocking the loop) until ``predicate()`` is true, or fail loudly."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
        await asyncio.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "",
) -> None:
    """Like :func:`wait_until` for an async predicate."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
        await asyncio.sleep(interval)
