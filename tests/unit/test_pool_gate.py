"""The admission gate in front of PostgresDatabase's pool (no server needed).

At most ``size`` callers hold a permit; waiters are served in arrival order; a wait
ends with ``PoolTimeout``; cancellation, before or after a permit was handed over,
never loses a permit or leaves a waiter stuck.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from psycopg_pool import PoolTimeout

from adapters.postgres import _Gate


def free_permits(gate: _Gate, size: int) -> int:
    """How many permits can be taken right now (given back afterwards)."""
    taken = 0
    while gate.try_acquire():
        taken += 1
    for _ in range(taken):
        gate.release()
    assert taken <= size
    return taken


class TestGate:
    async def test_at_most_size_holders_and_fifo_hand_over(self):
        """The third caller waits; released permits go to waiters in arrival order."""
        gate = _Gate(2)
        assert gate.try_acquire()
        assert gate.try_acquire()
        assert not gate.try_acquire()
        order: list[int] = []

        async def waiter(i: int) -> None:
            await gate.acquire(5.0)
            order.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert gate.waiting == 3
        for _ in range(3):
            gate.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]
        assert gate.waiting == 0
        gate.release()
        gate.release()
        assert free_permits(gate, 2) == 2

    async def test_a_wait_times_out_with_pool_timeout(self):
        """PoolTimeout after the timeout; the permit count is unchanged."""
        gate = _Gate(1)
        assert gate.try_acquire()
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(PoolTimeout):
            await gate.acquire(0.05)
        assert 0.04 <= loop.time() - began < 1.0
        assert gate.waiting == 0
        gate.release()
        assert free_permits(gate, 1) == 1

    async def test_a_cancelled_waiter_is_skipped(self):
        """A waiter cancelled in line does not swallow the next released permit."""
        gate = _Gate(1)
        assert gate.try_acquire()
        first = asyncio.create_task(gate.acquire(5.0))
        second = asyncio.create_task(gate.acquire(5.0))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        gate.release()
        await asyncio.wait_for(second, 1.0)
        assert first.cancelled()
        gate.release()
        assert free_permits(gate, 1) == 1

    async def test_cancelled_after_the_hand_over_passes_the_permit_on(self):
        """A permit handed to a waiter cancelled before it ran goes to the next waiter."""
        gate = _Gate(1)
        assert gate.try_acquire()
        first = asyncio.create_task(gate.acquire(5.0))
        second = asyncio.create_task(gate.acquire(5.0))
        await asyncio.sleep(0)
        gate.release()  # hands the permit to `first`, which has not run yet
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1.0)  # got the permit `first` passed on
        assert not gate.try_acquire()
        gate.release()
        assert free_permits(gate, 1) == 1

    @pytest.mark.parametrize("seed", range(5))
    async def test_random_cancellations_and_timeouts_lose_no_permit(self, seed: int):
        """Hundreds of holders and waiters, some cancelled, some timing out: every
        permit comes back and nobody is left waiting."""
        rng = random.Random(seed)
        size = 3
        gate = _Gate(size)
        held = 0
        peak = 0

        async def caller() -> None:
            nonlocal held, peak
            await gate.acquire(rng.choice([0.001, 0.02, 5.0]))
            held += 1
            peak = max(peak, held)
            try:
                await asyncio.sleep(rng.random() * 0.002)
            finally:
                held -= 1
                gate.release()

        tasks = [asyncio.create_task(caller()) for _ in range(300)]
        for _ in range(100):
            await asyncio.sleep(rng.random() * 0.001)
            rng.choice(tasks).cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert all(
            r is None or isinstance(r, asyncio.CancelledError | PoolTimeout) for r in results
        )
        assert peak <= size
        assert held == 0
        assert gate.waiting == 0
        assert free_permits(gate, size) == size
