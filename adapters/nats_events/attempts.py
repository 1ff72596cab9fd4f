"""FailureRecord: how many handler runs of a delivery failed, kept in a JetStream KV bucket.

JetStream counts deliveries, not handler runs: a batch returned at ``stop``, a
redelivery after a reconnect or after a member died all count. So the subscription
keeps its own count, on the failure path only (ADR 0024): a failed run writes
``<consumer>.<stream sequence>`` = runs so far before the nak; a delivery the server
numbers 1 was never failed and is not looked up; a later one is looked up once; an
event that ends (ack, dead letter) with a record has it purged.
"""

from __future__ import annotations

import contextlib
from typing import Final

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

__all__ = ["FailureRecord", "bucket_name"]

_MAX_AGE: Final = 7 * 24 * 3600.0


def bucket_name(stream: str) -> str:
    """The bucket of ``stream``'s failure records: ``<stream>_ATTEMPTS``."""
    return f"{stream}_ATTEMPTS"


class FailureRecord:
    """The failed-run counts of one stream's consumers (a KV bucket, created if missing,
    never modified when it exists)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        stream: str,
        *,
        storage: str,
        replicas: int,
        max_age: float | None,
    ) -> FailureRecord:
        """The bucket for ``stream``; created when missing (two creators at once both
        succeed)."""
        bucket = bucket_name(stream)
        try:
            return cls(await js.key_value(bucket))
        except nats.js.errors.BucketNotFoundError:
            pass
        config = KeyValueConfig(
            bucket=bucket,
            history=1,
            ttl=max_age if max_age else _MAX_AGE,
            storage=StorageType.FILE if storage == "file" else StorageType.MEMORY,
            replicas=replicas,
        )
        try:
            return cls(await js.create_key_value(config))
        except nats.js.errors.BadRequestError:
            # Created by another service between our look and our create.
            return cls(await js.key_value(bucket))

    async def failures(self, consumer: str, sequence: int) -> int:
        """Failed runs recorded for the event at ``sequence`` (0 when none)."""
        try:
            entry = await self._kv.get(f"{consumer}.{sequence}")
        except nats.js.errors.KeyNotFoundError:
            return 0
        value = entry.value or b""
        return int(value) if value.isdigit() else 0

    async def record(self, consumer: str, sequence: int, failures: int) -> None:
        """Record that ``failures`` runs of the event at ``sequence`` failed."""
        await self._kv.put(f"{consumer}.{sequence}", str(failures).encode())

    async def forget(self, consumer: str, sequence: int) -> None:
        """Drop the record of an event that is done (best effort: records expire)."""
        with contextlib.suppress(Exception):
            await self._kv.purge(f"{consumer}.{sequence}")
