"""The delivery policy both event adapters ask: ack, retry after a delay, or dead letter."""

from __future__ import annotations

import asyncio
from unittest.mock import AsyncMock

from hypothesis import given
from hypothesis import strategies as st

from adapters._delivery_policy import (
    ACK,
    REASON_TIMEOUT,
    after_run,
    before_run,
    carried_observer,
    is_own_cancellation,
    notify_dead_lettered,
    notify_ran,
    observer_of,
    undecodable,
)
from adapters._event_rules import backoff_delay
from ports.events import Reject

attempts = st.integers(min_value=1, max_value=50)
limits = st.integers(min_value=1, max_value=50)
backoffs = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=6).map(tuple)
failures = st.sampled_from([RuntimeError("x"), ValueError(""), KeyboardInterrupt(), Reject("no")])


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class TestBeforeRun:
    """A run may happen while the recorded failures leave an attempt."""

    @given(attempt=attempts, max_deliver=limits)
    def test_runs_iff_an_attempt_is_left(self, attempt: int, max_deliver: int) -> None:
        """None (run) iff attempt <= max_deliver; otherwise a max_deliver dead letter."""
        verdict = before_run(attempt, max_deliver)
        if attempt <= max_deliver:
            assert verdict is None
        else:
            assert verdict is not None
            assert (verdict.action, verdict.reason) == ("dead_letter", "max_deliver")


class TestAfterRun:
    """The verdict on a handler run."""

    @given(attempt=attempts, max_deliver=limits, backoff=backoffs)
    def test_success_is_an_ack(
        self, attempt: int, max_deliver: int, backoff: tuple[float, ...]
    ) -> None:
        """A run that returned is acked, whatever the attempt."""
        verdict = after_run(None, attempt=attempt, max_deliver=max_deliver, backoff=backoff)
        assert verdict == ACK

    @given(
        failure=failures,
        attempt=attempts,
        max_deliver=limits,
        backoff=backoffs,
        timed_out=st.booleans(),
    )
    def test_retry_iff_attempts_are_left_and_not_rejected(
        self,
        failure: BaseException,
        attempt: int,
        max_deliver: int,
        backoff: tuple[float, ...],
        timed_out: bool,
    ) -> None:
        """Retry iff attempt < max_deliver and not Reject, after backoff_delay; else a
        dead letter: rejected for Reject, max_deliver otherwise; always an error text."""
        verdict = after_run(
            failure, attempt=attempt, max_deliver=max_deliver, backoff=backoff, timed_out=timed_out
        )
        rejected = isinstance(failure, Reject)
        if not rejected and attempt < max_deliver:
            assert verdict.action == "retry"
            assert verdict.delay == backoff_delay(backoff, attempt)
        else:
            assert verdict.action == "dead_letter"
            assert verdict.reason == ("rejected" if rejected else "max_deliver")
            assert verdict.delay == 0.0
        assert verdict.error

    def test_error_texts(self) -> None:
        """A timeout names handler_timeout; a secret is redacted; str() raising is no
        problem; a Reject gives its reason."""
        timed_out = after_run(TimeoutError(), attempt=1, max_deliver=1, backoff=(), timed_out=True)
        assert timed_out.error.startswith(REASON_TIMEOUT)
        leaky = after_run(
            RuntimeError("postgres://user:hunter2@db/x"), attempt=1, max_deliver=1, backoff=()
        )
        assert "hunter2" not in leaky.error
        broken = after_run(_Unprintable(), attempt=2, max_deliver=3, backoff=(1.0,))
        assert (broken.action, broken.delay) == ("retry", 1.0)
        assert "_Unprintable" in broken.error
        rejected = after_run(Reject("unknown customer"), attempt=1, max_deliver=5, backoff=())
        assert rejected.error == "unknown customer"

    def test_undecodable_is_a_dead_letter_at_once(self) -> None:
        """An undecodable payload is dead-lettered with reason undecodable."""
        verdict = undecodable("message has no ce-id header")
        assert (verdict.action, verdict.reason) == ("dead_letter", "undecodable")
        assert verdict.error == "message has no ce-id header"


class TestOwnCancellation:
    """Only the cancellation of the running task itself is its own."""

    async def test_a_raised_cancelled_error_is_not_own(self) -> None:
        """A CancelledError raised in a task nobody cancelled is not its own; other
        exceptions never are."""
        assert is_own_cancellation(asyncio.CancelledError()) is False
        assert is_own_cancellation(RuntimeError()) is False

    async def test_a_cancelled_task_sees_its_own(self) -> None:
        """Inside a task being cancelled, its CancelledError is its own."""
        seen: list[bool] = []
        started = asyncio.Event()

        async def victim() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError as exc:
                seen.append(is_own_cancellation(exc))
                raise

        task = asyncio.create_task(victim())
        await started.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert seen == [True]


class TestObserver:
    """The seam through which a subscription reports its verdicts (telemetry)."""

    def test_a_plain_handler_has_no_observer(self) -> None:
        """A handler without ``delivery_observer``: None, and notifying None is a no-op."""

        async def handler(event: object) -> None:
            pass

        assert observer_of(handler) is None
        notify_ran(None, "ack")
        notify_dead_lettered(None, "rejected")

    def test_an_observer_is_attached_and_told(self) -> None:
        """observer_of tells the observer it is attached; notifications reach it."""
        heard: list[tuple[str, str]] = []

        class Observer:
            def attached(self) -> None:
                heard.append(("attached", ""))

            def ran(self, action: str) -> None:
                heard.append(("ran", action))

            def dead_lettered(self, reason: str) -> None:
                heard.append(("dead_lettered", reason))

        class Handler:
            delivery_observer = Observer()

        observer = observer_of(Handler())
        notify_ran(observer, "retry")
        notify_dead_lettered(observer, "undecodable")
        assert heard == [("attached", ""), ("ran", "retry"), ("dead_lettered", "undecodable")]

    def test_a_mock_handler_carries_no_observer(self) -> None:
        """A Mock handler, which invents every attribute, is not taken for an observer."""
        handler = AsyncMock()
        assert observer_of(handler) is None
        assert carried_observer(handler) is None
        assert handler.mock_calls == []

    def test_a_failing_observer_never_reaches_the_subscription(self) -> None:
        """An observer that raises is ignored: metrics never break delivery."""

        class Broken:
            def attached(self) -> None:
                pass

            def ran(self, action: str) -> None:
                raise RuntimeError("broken meter")

            def dead_lettered(self, reason: str) -> None:
                raise RuntimeError("broken meter")

        notify_ran(Broken(), "ack")
        notify_dead_lettered(Broken(), "rejected")

    def test_an_observer_that_fails_to_attach_is_not_taken(self) -> None:
        """An observer whose ``attached`` raises is not used (it keeps counting for
        itself) and the error never reaches the subscription."""

        class Broken:
            def attached(self) -> None:
                raise RuntimeError("broken meter")

            def ran(self, action: str) -> None:
                pass

            def dead_lettered(self, reason: str) -> None:
                pass

        class Handler:
            delivery_observer = Broken()

        assert observer_of(Handler()) is None
