"""Every use of nats-py internals, in one place (ADR 0022): the direct lane."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from nats.aio.client import Client as NatsClient

__all__ = ["Client", "Lane"]

# A delivery's lane callback: (subject, reply, payload, raw header block) -> None, or
# an awaitable to wait on before the client reads the next message.
Lane = Callable[[bytes, bytes, bytes, bytes | None], Awaitable[None] | None]


class Client(NatsClient):
    """nats-py's client with direct lanes (ADR 0022): messages for a subscription id
    that has a lane go to it as the protocol parser read them, skipping the client's
    header parsing, its ``Msg`` object and the subscription's queue and task. Every
    other message takes nats-py's own path unchanged. Lanes are read by overriding
    ``Client._process_msg`` (the parser's one entry point since nats-py 2.0; the
    integration tests fail if it ever moves)."""

    def __init__(self) -> None:
        super().__init__()
        self.lanes: dict[int, Lane] = {}

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        lane = self.lanes.get(sid)
        if lane is None:
            # nats-py annotates ``headers`` as bytes; its parser passes None without headers.
            await super()._process_msg(sid, subject, reply, data, cast(bytes, headers))
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        pending = lane(subject, reply, data, headers)
        if pending is not None:
            await pending
