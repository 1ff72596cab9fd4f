"""OutboxRelay: publishes committed outbox rows, marks them sent, prunes them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

import orjson

from adapters._event_rules import describe
from adapters._trace_carrier import OUTGOING, Carrier
from adapters.event_codec import trusted_event
from domain_errors import BadRequest, DomainError
from ports.clock import Clock, SystemClock
from ports.context import bind_context
from ports.database import Database, Row, Transaction
from ports.events import Event, Publisher
from ports.logger import Logger

from ._tables import CHANNEL, OUTBOX_TABLE, listens

__all__ = ["OutboxRelay"]

_COLUMNS: Final = (
    "position, event_id, event_type, source, organization_id, occurred_at, data, "
    "subject, request_id, traceparent, tracestate"
)
_SELECT: Final = (
    f"SELECT {_COLUMNS} FROM {OUTBOX_TABLE} WHERE sent_at IS NULL AND error IS NULL "
    "ORDER BY position LIMIT %s FOR UPDATE SKIP LOCKED"
)
_OLDEST: Final = (
    f"SELECT min(created_at) FROM {OUTBOX_TABLE} WHERE sent_at IS NULL AND error IS NULL"
)
_PRUNE: Final = (
    f"DELETE FROM {OUTBOX_TABLE} WHERE position IN (SELECT position FROM {OUTBOX_TABLE} "
    "WHERE sent_at < %s ORDER BY position LIMIT %s)"
)
_PRUNE_CHUNK: Final = 10_000


def _in_list(n: int) -> str:
    return ", ".join(["%s"] * n)


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # a lone surrogate, which orjson refuses and json keeps
        return json.loads(text)


def _event(row: Row) -> Event:
    # The row was written from a checked Event: rebuild it without checking again.
    return trusted_event(
        row["event_type"],
        row["source"],
        row["organization_id"],
        row["event_id"],
        data=_loads(row["data"]),
        timestamp=row["occurred_at"],
    )


class _Run:
    """Consecutive rows published by one ``publish_many``."""

    __slots__ = ("carrier", "request_id", "rows", "subject")

    def __init__(self, subject: str | None, rid: str | None, carrier: Carrier | None) -> None:
        self.subject = subject
        self.request_id = rid
        self.carrier = carrier
        self.rows: list[Row] = []


def _runs(rows: Sequence[Row]) -> list[_Run]:
    """Consecutive rows with the same subject, request_id and trace context, in
    position order (one ``publish_many`` each: the request_id and the trace context
    travel per call)."""
    runs: list[_Run] = []
    last: tuple[Any, ...] | None = None
    for row in rows:
        parent = row["traceparent"]
        key = (row["subject"], row["request_id"], parent, row["tracestate"])
        if not runs or key != last:
            carrier: Carrier | None = (parent, key[3]) if parent else None
            runs.append(_Run(key[0], key[1], carrier))
            last = key
        runs[-1].rows.append(row)
    return runs


class OutboxRelay:
    """Publishes committed ``hexinfra_outbox`` rows and marks them sent.

    One batch (:meth:`run_once` repeats them until none is left): in one
    transaction, take up to ``batch_size`` unsent rows in position order with
    ``FOR UPDATE SKIP LOCKED`` (relays running at once take disjoint rows),
    publish them with ``publisher.publish_many`` (consecutive rows of one subject,
    request_id and trace context per call; ``event.id`` is the ``Nats-Msg-Id``; the
    row's trace context is in ``_trace_carrier.OUTGOING`` during the call, so a
    ``TracedPublisher`` continues the trace of the transaction that added it), stamp
    ``sent_at``, commit. A relay that dies between publishing and committing
    leaves the rows unsent; the next batch publishes them again and the broker
    drops the copies by id (inside its duplicate window). An event the broker
    refuses for good (``BadRequest``: too big) gets ``error`` set and is skipped,
    logged at error; the others still go.

    Order: a single relay publishes in position order (the order of ``add`` calls:
    a transaction's events in order, and a transaction that starts adding after
    another committed comes after it). Two transactions committing concurrently may
    come out in either order: a row that commits late, behind rows already
    published, is published when seen. Several relays: each row once, no global
    order (ADR 0030).

    Running: ``start()`` runs batches in a task, woken by PostgreSQL LISTEN/NOTIFY
    (``SqlOutbox.add`` notifies at commit) and every ``poll_interval`` seconds in
    any case (the only wake-up on the SQLite fake); failures are logged and retried
    with backoff. ``stop(timeout)`` lets the batch in flight finish. Sent rows older
    than ``retention`` seconds are deleted at most once per ``prune_interval``.
    """

    def __init__(
        self,
        database: Database,
        publisher: Publisher,
        *,
        logger: Logger,
        clock: Clock | None = None,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        retention: float = 24 * 3600.0,
        prune_interval: float = 60.0,
        listen: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if poll_interval <= 0 or retention < 0 or prune_interval <= 0:
            raise ValueError("poll_interval and prune_interval must be positive")
        self._db = database
        self._publisher = publisher
        self._log = logger.bind(component="outbox_relay")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retention = retention
        self.prune_interval = prune_interval
        self._listen = listen and listens(database)
        self._pruned_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_error: str | None = None
        self.published = 0
        """Rows this relay has published and marked sent since it was built."""

    # --- one pass ------------------------------------------------------------------

    async def run_once(self) -> int:
        """Publish every committed unsent row (batch after batch), then prune if due.
        Returns how many rows this call marked sent. Errors propagate (the rows of
        the failing batch stay unsent)."""
        total = 0
        while True:
            done, taken = await self._batch()
            total += done
            if taken < self.batch_size:
                break
        await self._maybe_prune()
        return total

    async def _batch(self) -> tuple[int, int]:
        async with self._db.transaction() as tx:
            rows = await tx.fetch_all(_SELECT, (self.batch_size,))
            if not rows:
                return 0, 0
            sent, failed = await self._publish(rows)
            now = self._clock.now()
            if sent:
                await tx.execute(
                    f"UPDATE {OUTBOX_TABLE} SET sent_at = %s WHERE position IN "
                    f"({_in_list(len(sent))})",
                    (now, *sent),
                )
            for position, reason in failed.items():
                await self._fail(tx, position, reason)
        self.published += len(sent)
        return len(sent), len(rows)

    async def _publish(self, rows: Sequence[Row]) -> tuple[list[int], dict[int, str]]:
        sent: list[int] = []
        failed: dict[int, str] = {}
        for run in _runs(rows):
            subject, rows_of_run = run.subject, []
            events = []
            for row in run.rows:
                try:
                    events.append(_event(row))
                except (ValueError, TypeError, KeyError, DomainError) as exc:
                    # Not a stored event (another writer, a hand fix): never blocks
                    # the rows behind it.
                    failed[int(row["position"])] = f"row does not decode: {type(exc).__name__}"
                    continue
                rows_of_run.append(row)
            if not events:
                continue
            # The context the rows were written under: TracedPublisher's send span
            # continues it (no effect without telemetry; None: a new trace).
            token = OUTGOING.set(run.carrier)
            try:
                with bind_context(request_id=run.request_id):
                    try:
                        await self._publisher.publish_many(events, subject=subject)
                        sent.extend(int(row["position"]) for row in rows_of_run)
                        continue
                    except BadRequest:
                        pass
                    # One event of the run is refused for good: publish them one by one.
                    for row, event in zip(rows_of_run, events, strict=True):
                        try:
                            await self._publisher.publish(event, subject=subject)
                        except BadRequest as exc:
                            failed[int(row["position"])] = str(exc)
                        else:
                            sent.append(int(row["position"]))
            finally:
                OUTGOING.reset(token)
        return sent, failed

    async def _fail(self, tx: Transaction, position: int, reason: str) -> None:
        await tx.execute(
            f"UPDATE {OUTBOX_TABLE} SET error = %s WHERE position = %s", (reason, position)
        )
        self._log.error(
            "outbox event refused by the broker; it will not be published",
            position=position,
            error=reason,
        )

    async def prune(self) -> int:
        """Delete sent rows older than ``retention``; returns how many."""
        self._pruned_at = self._clock.monotonic()
        cutoff = self._clock.now() - timedelta(seconds=self.retention)
        total = 0
        while True:
            deleted = await self._db.execute(_PRUNE, (cutoff, _PRUNE_CHUNK))
            total += max(deleted, 0)
            if deleted < _PRUNE_CHUNK:
                return total

    async def _maybe_prune(self) -> None:
        now = self._clock.monotonic()
        if self._pruned_at is None or now - self._pruned_at >= self.prune_interval:
            await self.prune()

    # --- health ------------------------------------------------------------------------

    async def lag(self) -> float:
        """Age in seconds of the oldest committed unsent row (0.0 when none)."""
        oldest = await self._db.fetch_value(_OLDEST)
        if oldest is None:
            return 0.0
        age: float = (self._clock.now() - oldest).total_seconds()
        return max(0.0, age)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` while the loop task lives."""
        return self._task is not None and not self._task.done()

    @property
    def last_error(self) -> str | None:
        """The last failure of a batch, ``None`` once a batch succeeds again."""
        return self._last_error

    async def health(self) -> Mapping[str, Any]:
        """``running``, ``lag_s`` (oldest unsent row's age), ``published``,
        ``last_error``: what a health endpoint reports."""
        return {
            "running": self.running,
            "lag_s": round(await self.lag(), 3),
            "published": self.published,
            "last_error": self._last_error,
        }

    # --- the loop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Run batches in a background task until :meth:`stop`. Idempotent."""
        if self.running:
            return
        self._stopping = False
        self._wake.set()  # catch up at once
        if self._listen:
            self._listener = asyncio.create_task(self._listen_loop(), name="outbox-listen")
        self._task = asyncio.create_task(self._loop(), name="outbox-relay")
        self._log.info(
            "outbox relay started",
            listen=self._listen,
            poll_interval=self.poll_interval,
            batch_size=self.batch_size,
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the batch in flight finish for up to ``timeout`` seconds, then cancel
        (its rows stay unsent and are published again by the next relay, deduped by
        the broker). Idempotent."""
        self._stopping = True
        self._wake.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._log.info("outbox relay stopped", published=self.published)

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                await self.run_once()
            except Exception as exc:  # the relay never dies: back off and try again
                failures += 1
                self._last_error = describe(exc)
                delay = min(self.poll_interval * 2 ** min(failures - 1, 6), 30.0)
                log = (
                    self._log.warning if isinstance(exc, DomainError | OSError) else self._log.error
                )
                log(
                    "outbox relay batch failed; retrying",
                    error=self._last_error,
                    retry_in_s=delay,
                    failures=failures,
                )
                await self._pause(delay)
                continue
            failures = 0
            self._last_error = None
            if not self._wake.is_set():
                await self._pause(self.poll_interval)

    async def _pause(self, seconds: float) -> None:
        """Until a notification, :meth:`stop` or ``seconds`` on the clock."""
        if self._stopping:
            return
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (waker, sleeper):
                fut.cancel()
            await asyncio.gather(waker, sleeper, return_exceptions=True)

    async def _listen_loop(self) -> None:
        notifications: Callable[[str], AsyncIterator[str]] = self._db.notifications  # type: ignore[attr-defined]
        failures = 0
        while not self._stopping:
            try:
                async for _ in notifications(CHANNEL):
                    failures = 0
                    self._wake.set()
            except (DomainError, OSError) as exc:
                failures += 1
                delay = min(0.5 * 2 ** min(failures - 1, 6), 30.0)
                self._log.warning(
                    "outbox relay lost its LISTEN connection; polling meanwhile",
                    error=str(exc),
                    retry_in_s=delay,
                )
                self._wake.set()  # notifications may have been missed
                await self._clock.sleep(delay)

    def __repr__(self) -> str:
        return f"OutboxRelay(listen={self._listen}, running={self.running})"
