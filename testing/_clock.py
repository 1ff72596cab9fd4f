from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


class FakeClock:
    """A :class:`ports.clock.Clock` that moves only when told to.

    ``sleep(s)`` suspends until :meth:`advance` has moved the clock ``s`` seconds
    past the moment of the call; ``sleep(0)`` (or negative) only yields. ``now()``
    starts at ``start`` (2030-01-01T00:00:00Z by default) and ``monotonic()`` at 0.
    Sleepers wake in deadline order, ties in call order, so runs are reproducible.
    """

    def __init__(self, start: datetime = _EPOCH) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock start must be timezone-aware")
        self._start = start.astimezone(UTC)
        self._offset = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._offset)

    def monotonic(self) -> float:
        return self._offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._offset + seconds, next(self._counter), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("FakeClock cannot go backwards")
        self._offset += seconds
        while self._sleepers and self._sleepers[0][0] <= self._offset:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def next_deadline(self) -> float | None:
        """Seconds until the earliest sleeper is due, or ``None`` if none sleeps."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        if not self._sleepers:
            return None
        return max(0.0, self._sleepers[0][0] - self._offset)

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now().isoformat()})"
