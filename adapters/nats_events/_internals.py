"""Every use of nats-py internals, in one place (ADR 0022): the direct lane, and its fallback."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Final, cast

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription_

__all__ = ["Client", "Lane", "lanes_supported", "new_client", "subscribe_lane", "drop_lane"]

# A delivery's lane callback: (subject, reply, payload, raw header block) -> None, or
# an awaitable to wait on before the client reads the next message.
Lane = Callable[[bytes, bytes, bytes, bytes | None], Awaitable[None] | None]

_EXPECTED: Final = ("self", "sid", "subject", "reply", "data", "headers")
_CRLF: Final = "\r\n"


def lanes_supported(client_class: type[NatsClient] = NatsClient) -> bool:
    """Whether ``client_class._process_msg`` is the coroutine the direct lane overrides
    (the parser's one entry point since nats-py 2.0, with these parameters)."""
    method = getattr(client_class, "_process_msg", None)
    if method is None or not inspect.iscoroutinefunction(method):
        return False
    try:
        names = tuple(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return False
    return names == _EXPECTED


class Client(NatsClient):
    """nats-py's client with direct lanes (ADR 0022): messages for a subscription id
    that has a lane go to it as the protocol parser read them, skipping the client's
    header parsing, its ``Msg`` object and the subscription's queue and task. Every
    other message takes nats-py's own path unchanged. Made only when
    :func:`lanes_supported` says the installed nats-py matches."""

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


def new_client(*, direct: bool) -> NatsClient:
    """A client with direct lanes when ``direct`` (checked by :func:`lanes_supported`),
    else nats-py's own client, on which :func:`subscribe_lane` uses the public API."""
    return Client() if direct else NatsClient()


async def subscribe_lane(nc: NatsClient, subject: str, lane: Lane) -> NatsSubscription_:
    """Subscribe ``subject`` so that each message reaches ``lane`` as raw parts: on the
    direct lane when ``nc`` has lanes, else through a public ``cb`` that writes the
    ``Msg`` back into the raw form (correct, slower)."""
    if isinstance(nc, Client):
        sub = await nc.subscribe(subject)
        nc.lanes[sub._id] = lane
        return sub

    async def callback(msg: Msg) -> None:
        pending = lane(
            msg.subject.encode(), msg.reply.encode(), msg.data, _header_block(msg.headers)
        )
        if pending is not None:
            await pending

    return await nc.subscribe(subject, cb=callback)


def drop_lane(nc: NatsClient, sub: NatsSubscription_) -> None:
    """Forget ``sub``'s lane (after it is unsubscribed)."""
    if isinstance(nc, Client):
        nc.lanes.pop(sub._id, None)


def _header_block(headers: dict[str, str] | None) -> bytes | None:
    """The raw header block nats-py parsed into ``headers`` (its status, when it has
    one, back on the version line)."""
    if headers is None:
        return None
    fields = dict(headers)
    status = fields.pop("Status", "")
    description = fields.pop("Description", "")
    first = " ".join(part for part in ("NATS/1.0", status, description) if part)
    lines = [first, *(f"{k}: {v}" for k, v in fields.items()), "", ""]
    return _CRLF.join(lines).encode()
