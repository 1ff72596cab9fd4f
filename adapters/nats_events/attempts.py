"""FailureRecord: the handler runs of a redelivered event, kept in a JetStream KV bucket.

JetStream counts deliveries, not handler runs: a batch returned at ``stop``, a
redelivery after a reconnect or after a member died all count. So the subscription
keeps its own count, off the happy path (ADR 0024): a delivery the server numbers 1 is
neither read nor written before its run; a failed run writes
``<consumer>.<stream sequence>`` = runs so far before the nak; a redelivery reads the
record once and writes its own run before it starts (so a run that crashes the process
counts too); an event that ends (ack, dead letter) with a record has it purged. A run
that ends in a dead letter is recorded with the dead letter's verdict first, so a dead
letter that could not be stored never runs the handler again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

__all__ = ["FailureRecord", "Runs", "bucket_name"]

_DEFAULT_TTL: Final = 7 * 24 * 3600.0


def bucket_name(stream: str) -> str:
    """The bucket of ``stream``'s failure records: ``<stream>_ATTEMPTS``."""
    return f"{stream}_ATTEMPTS"


class Runs:
    """What the record says of one event: ``runs`` so far, and the dead letter
    (``reason``, ``error``) it is owed when a run already ended in one."""

    __slots__ = ("error", "reason", "runs")

    def __init__(self, runs: int = 0, reason: str = "", error: str = "") -> None:
        self.runs = runs
        self.reason = reason
        self.error = error

    @classmethod
    def parse(cls, value: bytes) -> Runs:
        if value.isdigit():
            return cls(int(value))
        try:
            raw = orjson.loads(value)
            return cls(int(raw["runs"]), str(raw.get("reason", "")), str(raw.get("error", "")))
        except (ValueError, KeyError, TypeError):
            return cls()

    def encode(self) -> bytes:
        if not self.reason:
            return str(self.runs).encode()
        return orjson.dumps({"runs": self.runs, "reason": self.reason, "error": self.error})


class FailureRecord:
    """The run counts of one stream's consumers: a KV bucket, created when missing
    (never modified when it exists), looked up on the connection's current JetStream
    context so that it follows a replaced client and a restarted server."""

    def __init__(
        self,
        jetstream: Callable[[], JetStreamContext],
        stream: str,
        *,
        storage: str,
        replicas: int,
        max_age: float | None,
    ) -> None:
        self._jetstream = jetstream
        self._bucket = bucket_name(stream)
        self._config = KeyValueConfig(
            bucket=self._bucket,
            history=1,
            ttl=max_age if max_age else _DEFAULT_TTL,
            storage=StorageType.FILE if storage == "file" else StorageType.MEMORY,
            replicas=replicas,
        )
        self._kv: KeyValue | None = None
        self._js: JetStreamContext | None = None

    async def open(self) -> None:
        """Find or create the bucket (two creators at once both succeed)."""
        js = self._jetstream()
        try:
            kv = await js.key_value(self._bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(self._config)
            except nats.js.errors.BadRequestError:
                # Created by another member or service between our look and our create.
                kv = await js.key_value(self._bucket)
        self._kv, self._js = kv, js

    async def _bound(self) -> KeyValue:
        if self._kv is None or self._js is not self._jetstream():
            await self.open()
        assert self._kv is not None
        return self._kv

    async def read(self, consumer: str, sequence: int) -> Runs:
        """The record of the event at ``sequence`` (no runs when none)."""
        kv = await self._bound()
        try:
            entry = await kv.get(f"{consumer}.{sequence}")
        except nats.js.errors.KeyNotFoundError:
            return Runs()
        return Runs.parse(entry.value or b"")

    async def write(self, consumer: str, sequence: int, runs: Runs) -> None:
        """Record ``runs`` for the event at ``sequence``. A bucket that went away (a
        memory-storage server restarted, an operator deleted it) is created again."""
        kv = await self._bound()
        key, value = f"{consumer}.{sequence}", runs.encode()
        try:
            await kv.put(key, value)
        except (
            nats.js.errors.NotFoundError,
            nats.js.errors.NoStreamResponseError,
            nats.errors.NoRespondersError,
        ):
            await self.open()
            assert self._kv is not None
            await self._kv.put(key, value)

    async def forget(self, consumer: str, sequence: int) -> None:
        """Drop the record of an event that is done (best effort: records expire)."""
        with contextlib.suppress(Exception):
            kv = await self._bound()
            await kv.purge(f"{consumer}.{sequence}")
