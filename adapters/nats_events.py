"""NATS JetStream adapter: :class:`NatsConnection`, :class:`NatsPublisher`, :class:`NatsSubscriber`.

One connection serves both sides::

    connection = NatsConnection.from_config(config, logger=logger)
    publisher, subscriber = NatsPublisher(connection), NatsSubscriber(connection)
    await connection.connect()        # connects (with retries) and ensures the streams
    ...
    await connection.close()          # stops subscriptions, drains, closes

Streams (ensured by ``connect``): ``EVENTS_STREAM`` captures ``<EVENTS_PREFIX>.>``
(port subjects are relative: ``order.placed`` travels as ``events.order.placed``),
with ``EVENTS_REPLICAS`` replicas, file storage and a duplicate window of
``EVENTS_DUPLICATE_WINDOW_S``; its dead-letter stream ``<EVENTS_STREAM>_DEAD``
captures ``<EVENTS_DEAD_PREFIX>.>`` (``dead.>`` by default).

Publishing: the event travels as a CloudEvent (:mod:`adapters.event_codec`) with
``Nats-Msg-Id`` = ``event.id``. ``publish`` returns after the PubAck; timeouts,
"no responders" and other transient failures are retried ``EVENTS_PUBLISH_RETRIES``
times with exponential backoff under the same id (so a retry never duplicates),
then ``ServiceUnavailable`` (code ``BROKER_UNAVAILABLE``). ``publish_many``
pipelines: every message is sent before any ack is awaited, then only the ones
without an ack are retried, still under their ids.

Consuming (ADR 0015): a durable pull consumer per ``durable``, fed by a continuous
pull (a request for up to ``EVENTS_PULL_BATCH`` messages is topped up as they are
handled, with idle heartbeats), handled by ``concurrency`` workers. Handler returns
-> ack; raises -> nak with the backoff delay; the ``max_deliver``-th failure, a
:class:`~ports.events.Reject` or an undecodable payload -> the original payload
and headers, plus ``Dead-Letter-*`` headers naming subject, durable, reason,
attempts and error, are published to ``<EVENTS_DEAD_PREFIX>.<durable>.<subject>``,
then the original is terminated. Messages being handled or waiting locally are
kept alive with ``+WPI`` every ``ack_wait / 2``. A consumer the server lost is
re-created; a lost pull (reconnect, server restart, leader change) is detected by
heartbeats and re-issued. The pull inbox is read on a direct lane of the client
(ADR 0022): deliveries skip nats-py's ``Msg``, header dict and per-subscription task,
and their headers are read by this module (exactly as nats-py reads them).

Settings keys (through :class:`ports.config.ConfigSource`; all optional but the URL):

================================  ========  ===============================================
``NATS_URL``                      required  one URL or a comma-separated list (cluster)
``EVENTS_STREAM``                 EVENTS    stream name (dead letters: ``<name>_DEAD``)
``EVENTS_PREFIX``                 events    subject prefix of the stream
``EVENTS_DEAD_PREFIX``            dead      subject prefix of the dead-letter stream
``EVENTS_REPLICAS``               1         stream replicas (3 on a 3-node cluster)
``EVENTS_STORAGE``                file      ``file`` or ``memory``
``EVENTS_DUPLICATE_WINDOW_S``     120       dedupe window of ``Nats-Msg-Id``
``EVENTS_PUBLISH_RETRIES``        3         retries after the first attempt
``EVENTS_PUBLISH_TIMEOUT_S``      5         wait for one PubAck
``EVENTS_PUBLISH_BACKOFF_S``      0.1       first retry delay (doubles on each retry)
``EVENTS_PUBLISH_BACKOFF_MAX_S``  2         longest retry delay
``EVENTS_PUBLISH_WINDOW``         2000      publish_many: sends in flight at once
``EVENTS_API_TIMEOUT_S``          5         JetStream API calls (streams, consumers)
``EVENTS_PULL_BATCH``             128       messages requested/buffered per subscription
``EVENTS_PULL_EXPIRES_S``         5         life of one pull request (heartbeat: 1/5 of it)
``EVENTS_MAX_ACK_PENDING``        10000     consumer's max unacked messages
``NATS_CONNECT_RETRIES``          5         first-connect attempts
``NATS_CONNECT_TIMEOUT_S``        2         one connect attempt
``NATS_CONNECT_BACKOFF_S``        0.2       first connect retry delay (doubles)
``NATS_RECONNECT_WAIT_S``         0.5       between reconnect attempts (forever)
``SERVICE_NAME``                  hexinfra  the client's connection name
================================  ========  ===============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, cast

import attrs
import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription_
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    StorageType,
    StreamConfig,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from adapters import event_codec
from adapters._event_rules import (
    REASON_MAX_DELIVER,
    REASON_REJECTED,
    REASON_UNDECODABLE,
    NullLogger,
    backoff_delay,
    check_durable,
    check_publish_subject,
    check_subscribe_options,
    check_subscribe_subject,
    describe,
)
from domain_errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    ErrorCode,
    ServiceUnavailable,
)
from ports.clock import Clock, SystemClock
from ports.config import ConfigSource
from ports.context import bind_context, request_id
from ports.events import (
    DEFAULT_ACK_WAIT,
    DEFAULT_BACKOFF,
    DEFAULT_MAX_DELIVER,
    DeadLetter,
    Event,
    Handler,
    PublishAck,
    Reject,
)
from ports.logger import Logger

__all__ = [
    "NatsSettings",
    "NatsConnection",
    "NatsPublisher",
    "NatsSubscriber",
    "NatsSubscription",
    "H_DEAD_SUBJECT",
    "H_DEAD_DURABLE",
    "H_DEAD_REASON",
    "H_DEAD_ATTEMPTS",
    "H_DEAD_ERROR",
    "H_DEAD_MSG_ID",
]

H_DEAD_SUBJECT: Final = "Dead-Letter-Subject"
H_DEAD_DURABLE: Final = "Dead-Letter-Durable"
H_DEAD_REASON: Final = "Dead-Letter-Reason"
H_DEAD_ATTEMPTS: Final = "Dead-Letter-Attempts"
H_DEAD_ERROR: Final = "Dead-Letter-Error"
H_DEAD_MSG_ID: Final = "Dead-Letter-Msg-Id"
_DEAD_HEADERS: Final = frozenset(
    h.lower()
    for h in (
        H_DEAD_SUBJECT,
        H_DEAD_DURABLE,
        H_DEAD_REASON,
        H_DEAD_ATTEMPTS,
        H_DEAD_ERROR,
        H_DEAD_MSG_ID,
        event_codec.H_MSG_ID,
    )
)

_STATUS: Final = "Status"
_PENDING_MSGS: Final = "Nats-Pending-Messages"
_STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_PREFIX: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_URL_PASSWORD: Final = re.compile(r"(?P<head>://[^:/?#@\s]*:)[^@/\s]*(?P<at>@)")
_URL_TOKEN: Final = re.compile(r"(?P<head>://)[^:/?#@\s]+(?P<at>@)")
_TRANSIENT: Final = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
)


def redact_url(url: str) -> str:
    """``url`` with a password or token replaced by ``***``."""
    return _URL_TOKEN.sub(r"\g<head>***\g<at>", _URL_PASSWORD.sub(r"\g<head>***\g<at>", url))


def _check_name(value: str, key: str, pattern: re.Pattern[str]) -> str:
    if pattern.match(value) is None:
        raise ConfigurationError(
            f"{key} must be letters, digits, '_' or '-' (dot-separated for a prefix)",
            details={"key": key},
        )
    return value


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be > 0", details={"field": attribute.name})


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(
            f"{attribute.name} must be >= 0", details={"field": attribute.name}
        )


@attrs.frozen(kw_only=True)
class NatsSettings:
    """Settings of a :class:`NatsConnection` (keys in the module docstring); seconds."""

    url: str = attrs.field(repr=lambda url: repr(redact_url(url)))
    stream: str = "EVENTS"
    prefix: str = "events"
    dead_prefix: str = "dead"
    replicas: int = attrs.field(default=1, validator=_positive)
    storage: Literal["file", "memory"] = "file"
    duplicate_window: float = attrs.field(default=120.0, validator=_positive)
    publish_retries: int = attrs.field(default=3, validator=_non_negative)
    publish_timeout: float = attrs.field(default=5.0, validator=_positive)
    publish_backoff: float = attrs.field(default=0.1, validator=_non_negative)
    publish_backoff_max: float = attrs.field(default=2.0, validator=_non_negative)
    publish_window: int = attrs.field(default=2000, validator=_positive)
    api_timeout: float = attrs.field(default=5.0, validator=_positive)
    pull_batch: int = attrs.field(default=128, validator=_positive)
    pull_expires: float = attrs.field(default=5.0, validator=_positive)
    max_ack_pending: int = attrs.field(default=10_000, validator=_positive)
    connect_retries: int = attrs.field(default=5, validator=_positive)
    connect_timeout: float = attrs.field(default=2.0, validator=_positive)
    connect_backoff: float = attrs.field(default=0.2, validator=_non_negative)
    reconnect_wait: float = attrs.field(default=0.5, validator=_positive)
    name: str = "hexinfra"

    def __attrs_post_init__(self) -> None:
        if not self.url.strip():
            raise ConfigurationError("NATS_URL must not be empty", details={"key": "NATS_URL"})
        _check_name(self.stream, "EVENTS_STREAM", _STREAM_NAME)
        _check_name(self.prefix, "EVENTS_PREFIX", _PREFIX)
        _check_name(self.dead_prefix, "EVENTS_DEAD_PREFIX", _PREFIX)
        if self.storage not in ("file", "memory"):
            raise ConfigurationError(
                "EVENTS_STORAGE must be file or memory", details={"key": "EVENTS_STORAGE"}
            )
        if self.dead_prefix == self.prefix:
            raise ConfigurationError(
                "EVENTS_DEAD_PREFIX must differ from EVENTS_PREFIX",
                details={"key": "EVENTS_DEAD_PREFIX"},
            )

    @property
    def servers(self) -> list[str]:
        """The server URLs (``url`` split on commas)."""
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def dead_stream(self) -> str:
        """The dead-letter stream: ``<stream>_DEAD``."""
        return f"{self.stream}_DEAD"

    @classmethod
    def from_config(cls, config: ConfigSource) -> NatsSettings:
        """Read the settings from ``config``; ``ConfigurationError`` naming bad keys."""
        storage = config.get_str("EVENTS_STORAGE", "file").strip().lower()
        return cls(
            url=config.get_str("NATS_URL"),
            stream=config.get_str("EVENTS_STREAM", "EVENTS"),
            prefix=config.get_str("EVENTS_PREFIX", "events"),
            dead_prefix=config.get_str("EVENTS_DEAD_PREFIX", "dead"),
            replicas=config.get_int("EVENTS_REPLICAS", 1),
            storage=cast(Literal["file", "memory"], storage),
            duplicate_window=config.get_float("EVENTS_DUPLICATE_WINDOW_S", 120.0),
            publish_retries=config.get_int("EVENTS_PUBLISH_RETRIES", 3),
            publish_timeout=config.get_float("EVENTS_PUBLISH_TIMEOUT_S", 5.0),
            publish_backoff=config.get_float("EVENTS_PUBLISH_BACKOFF_S", 0.1),
            publish_backoff_max=config.get_float("EVENTS_PUBLISH_BACKOFF_MAX_S", 2.0),
            publish_window=config.get_int("EVENTS_PUBLISH_WINDOW", 2000),
            api_timeout=config.get_float("EVENTS_API_TIMEOUT_S", 5.0),
            pull_batch=config.get_int("EVENTS_PULL_BATCH", 128),
            pull_expires=config.get_float("EVENTS_PULL_EXPIRES_S", 5.0),
            max_ack_pending=config.get_int("EVENTS_MAX_ACK_PENDING", 10_000),
            connect_retries=config.get_int("NATS_CONNECT_RETRIES", 5),
            connect_timeout=config.get_float("NATS_CONNECT_TIMEOUT_S", 2.0),
            connect_backoff=config.get_float("NATS_CONNECT_BACKOFF_S", 0.2),
            reconnect_wait=config.get_float("NATS_RECONNECT_WAIT_S", 0.5),
            name=config.get_str("SERVICE_NAME", "hexinfra") or "hexinfra",
        )


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, nats.js.errors.APIError) and exc.code == 503:
        return True
    return isinstance(exc, _TRANSIENT)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact_url(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]


class _AckError(Exception):
    """A JetStream API error in a PubAck."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code


class _NoResponders(nats.errors.NoRespondersError):
    """No stream captures the subject (yet): JetStream restarting, or stream gone."""


# A delivery's lane callback: (subject, reply, payload, raw header block) -> None, or
# an awaitable to wait on before the client reads the next message.
_Lane = Callable[[bytes, bytes, bytes, bytes | None], Awaitable[None] | None]


class _Client(NatsClient):
    """nats-py's client with direct lanes (ADR 0022): messages for a subscription id
    that has a lane go to it as the protocol parser read them, skipping the client's
    header parsing, its ``Msg`` object and the subscription's queue and task. Every
    other message takes nats-py's own path unchanged. Lanes are read by overriding
    ``Client._process_msg`` (the parser's one entry point since nats-py 2.0; the
    integration tests fail if it ever moves)."""

    def __init__(self) -> None:
        super().__init__()
        self.lanes: dict[int, _Lane] = {}

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


_SPACE: Final = re.compile(r"\s")
_VERSION_LINE: Final = b"NATS/1.0"


def _header_lines(lines: bytes, *, lower: bool = False) -> dict[str, str]:
    """The headers in the lines of a NATS header block (what follows its
    ``NATS/1.0`` line), read exactly as nats-py reads them
    (``Client._parse_header_lines``: the last of a repeated name wins; names with
    whitespace or non-ASCII bytes are skipped; values are stripped and decoded as
    UTF-8 with replacement), with names lower-cased if ``lower``."""
    out: dict[str, str] = {}
    if lines.isascii():
        text = lines.decode("ascii")
        if text.replace("\r\n", "").isprintable():
            # The usual block: no control characters, so the only whitespace is the
            # space, which str.strip and bytes.strip treat alike.
            for line in text.split("\r\n"):
                name, sep, value = line.partition(":")
                if sep:
                    if " " in name:
                        name = name.strip()
                        if " " in name:
                            continue
                    out[name.lower() if lower else name] = value.strip()
            return out
    for line_b in lines.split(b"\r\n"):
        name_b, sep_b, value_b = line_b.partition(b":")
        if not sep_b:
            continue
        try:
            key = name_b.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _SPACE.search(key) is None:
            out[key.lower() if lower else key] = value_b.strip().decode("utf-8", "replace")
    return out


def _status_of(raw: bytes | None) -> tuple[str, str, dict[str, str]]:
    """Status code, description and headers of a status message
    (``NATS/1.0 408 Request Timeout\\r\\nNats-Pending-Messages: 3\\r\\n\\r\\n``)."""
    if not raw:
        return "", "", {}
    line, _, rest = raw.partition(b"\r\n")
    status = line[len(_VERSION_LINE) :].decode("utf-8", "replace").strip()
    code, _, description = status.partition(" ")
    return code, description.strip(), _header_lines(rest)


_NAK: Final = Msg.Ack.Nak
_TERM: Final = Msg.Ack.Term
_PROGRESS: Final = Msg.Ack.Progress


class _Delivery:
    """A JetStream delivery as it came off the wire, with the acknowledgements a
    subscription sends besides the ack (the same payloads nats-py's ``Msg`` sends;
    the ack, an empty message to the reply subject, is sent inline). Headers are
    parsed only when asked for."""

    __slots__ = ("_nc", "_subject", "data", "raw_headers", "reply")

    def __init__(
        self, nc: NatsClient, subject: bytes, reply: str, data: bytes, raw_headers: bytes | None
    ) -> None:
        self._nc = nc
        self._subject = subject
        self.reply = reply
        self.data = data
        self.raw_headers = raw_headers

    @property
    def subject(self) -> str:
        """The subject the message was published to (bytes that are not UTF-8 read
        as U+FFFD, so that a dead letter can still be stored and logged)."""
        return self._subject.decode("utf-8", "replace")

    def lowered_headers(self) -> dict[str, str]:
        """The headers, names in lower case (what the event codec reads)."""
        return self._read_headers(lower=True)

    @property
    def headers(self) -> dict[str, str]:
        """The headers as sent (names in their own case)."""
        return self._read_headers(lower=False)

    def _read_headers(self, *, lower: bool) -> dict[str, str]:
        raw = self.raw_headers  # b"NATS/1.0\r\n" then the lines
        return _header_lines(raw[len(_VERSION_LINE) + 2 :], lower=lower) if raw else {}

    @property
    def stream_sequence(self) -> int:
        """The message's sequence in the stream (from the ack subject)."""
        tokens = self.reply.split(".")
        return int(tokens[5 if len(tokens) == 9 else 7])

    async def nak(self, delay: float | None = None) -> None:
        payload = _NAK if not delay else _NAK + b' {"delay":%d}' % int(delay * 1e9)
        await self._nc.publish(self.reply, payload)

    async def term(self) -> None:
        await self._nc.publish(self.reply, _TERM)

    async def in_progress(self) -> None:
        await self._nc.publish(self.reply, _PROGRESS)


class NatsConnection:
    """One NATS connection with JetStream, shared by a publisher and a subscriber.

    ``connect()`` retries the first connection ``NATS_CONNECT_RETRIES`` times with
    exponential backoff (nats-py does not retry a first connect), then reconnects
    forever after any later loss, logging each disconnect and reconnect; then it
    ensures both streams. ``close(timeout)`` stops every subscription (letting
    handlers finish), drains the connection and closes it; it is idempotent.
    Safe to share between tasks. No I/O happens before ``connect()``.
    """

    def __init__(
        self,
        settings: NatsSettings,
        *,
        logger: Logger | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._logger: Logger = logger if logger is not None else NullLogger()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._state: Literal["new", "connecting", "open", "closed"] = "new"
        self._subscriptions: set[NatsSubscription] = set()
        self._reply_prefix = ""
        self._reply_sub: NatsSubscription_ | None = None
        self._acks: dict[str, asyncio.Future[PublishAck]] = {}
        self._tokens = itertools.count(1)
        self._where = ",".join(redact_url(s) for s in settings.servers)

    @classmethod
    def from_config(
        cls, config: ConfigSource, *, logger: Logger | None = None, clock: Clock | None = None
    ) -> NatsConnection:
        """A connection built from ``config`` (keys in the module docstring)."""
        return cls(NatsSettings.from_config(config), logger=logger, clock=clock)

    def __repr__(self) -> str:
        return f"NatsConnection({self._where}, {self._state})"

    # --- lifecycle -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the client is connected right now (not reconnecting, not closed)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def client(self) -> NatsClient:
        """The nats-py client (for escape hatches); ``ServiceUnavailable`` before
        ``connect()`` or after ``close()``."""
        if self._nc is None or self._state != "open":
            raise ServiceUnavailable(
                "NATS connection is not open (call connect() first)",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": self._state},
            )
        return self._nc

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context; ``ServiceUnavailable`` when not open."""
        self.client  # noqa: B018 - raises when not open
        assert self._js is not None
        return self._js

    async def connect(self) -> None:
        """Connect (retrying with backoff), then ensure the streams. Idempotent."""
        if self._state == "open":
            return
        if self._state == "closed":
            raise ServiceUnavailable(
                "NATS connection was closed; build a new NatsConnection",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "closed"},
            )
        s = self.settings
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.connect_retries),
            wait=wait_exponential(
                multiplier=s.connect_backoff, max=max(s.connect_backoff, 0.1) * 16
            ),
            sleep=self._clock.sleep,
            retry=retry_if_exception(lambda e: not isinstance(e, asyncio.CancelledError)),
            before_sleep=self._log_connect_retry,
            reraise=True,
        )
        self._state = "connecting"
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    client = _Client()
                    await client.connect(
                        servers=s.servers,
                        name=s.name,
                        connect_timeout=max(1, round(s.connect_timeout)),
                        # Annotated int by nats-py, used as asyncio.sleep's delay.
                        reconnect_time_wait=s.reconnect_wait,  # type: ignore[arg-type]
                        # nats-py loops forever on a first connect when this is -1:
                        # tenacity owns first-connect retries, see below.
                        max_reconnect_attempts=1,
                        allow_reconnect=True,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        closed_cb=self._on_closed,
                        drain_timeout=30,
                    )
                    self._nc = client
        except Exception as exc:
            self._state = "new"
            raise ServiceUnavailable(
                f"NATS at {self._where} did not accept a connection after {attempts} "
                f"attempts: {_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "connect", "attempts": attempts},
            ) from exc
        nc = self._nc
        assert nc is not None
        # Once connected, reconnect forever (read by nats-py at each reconnect).
        nc.options["max_reconnect_attempts"] = -1
        self._js = nc.jetstream(timeout=s.api_timeout)
        self._reply_prefix = nc.new_inbox() + "."
        self._reply_sub = await nc.subscribe(self._reply_prefix + "*", cb=self._on_ack)
        self._state = "open"
        try:
            await self.ensure_streams()
        except BaseException:
            await self._shutdown(timeout=1.0)
            raise
        self._logger.info(
            "nats connected",
            server=self._server(),
            stream=s.stream,
            prefix=s.prefix,
            attempts=attempts,
        )

    def _log_connect_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        self._logger.warning(
            "nats not reachable, retrying",
            servers=self._where,
            attempt=state.attempt_number,
            of=self.settings.connect_retries,
            retry_in_s=round(delay, 3),
            reason=_reason(exc) if exc is not None else "",
        )

    def _server(self) -> str:
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        return f"{url.hostname}:{url.port}" if url is not None else "?"

    async def _on_error(self, exc: Exception) -> None:
        self._logger.warning("nats client error", reason=_reason(exc))

    async def _on_disconnected(self) -> None:
        if self._state == "open":
            self._logger.warning("nats disconnected; reconnecting", servers=self._where)

    async def _on_reconnected(self) -> None:
        self._logger.info("nats reconnected", server=self._server())
        for subscription in list(self._subscriptions):
            subscription._on_reconnected()

    async def _on_closed(self) -> None:
        self._logger.info("nats connection closed", servers=self._where)

    async def health_check(self) -> None:
        """``ServiceUnavailable`` unless connected and JetStream answers."""
        js = self.jetstream
        if not self.connected:
            raise ServiceUnavailable(
                "NATS is disconnected (reconnecting)",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "disconnected"},
            )
        try:
            await js.stream_info(self.settings.stream)
        except Exception as exc:
            raise ServiceUnavailable(
                f"JetStream did not answer: {_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "health"},
            ) from exc

    async def close(self, timeout: float = 10.0) -> None:
        """Stop subscriptions (handlers finish), drain and close. Idempotent."""
        if self._state in ("closed", "new"):
            self._state = "closed"
            return
        self._state = "closed"
        await asyncio.gather(
            *(s.stop(timeout) for s in list(self._subscriptions)), return_exceptions=True
        )
        await self._shutdown(timeout)

    async def _shutdown(self, timeout: float) -> None:
        self._state = "closed"
        for future in self._acks.values():
            if not future.done():
                future.set_exception(
                    ServiceUnavailable("NATS connection closed", code=ErrorCode.BROKER_UNAVAILABLE)
                )
        self._acks.clear()
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        try:
            await asyncio.wait_for(nc.drain(), timeout=max(0.1, timeout))
        except Exception as exc:
            self._logger.warning("nats drain did not finish; closing", reason=_reason(exc))
        finally:
            if not nc.is_closed:
                with contextlib.suppress(Exception):
                    await nc.close()

    # --- streams ---------------------------------------------------------------------

    async def ensure_stream(
        self,
        name: str,
        subjects: Sequence[str],
        *,
        storage: Literal["file", "memory"] = "file",
        replicas: int = 1,
        duplicate_window: float = 120.0,
    ) -> None:
        """Create stream ``name`` or bring its subjects, replicas and duplicate window
        to these values. ``ServiceUnavailable`` when JetStream refuses or is down."""
        js = self.jetstream
        config = StreamConfig(
            name=name,
            subjects=list(subjects),
            storage=StorageType.FILE if storage == "file" else StorageType.MEMORY,
            num_replicas=replicas,
            duplicate_window=duplicate_window,
        )
        try:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                await js.add_stream(config)
                self._logger.info("stream created", stream=name, subjects=list(subjects))
                return
            current = info.config
            if (
                sorted(current.subjects or []) != sorted(subjects)
                or (current.num_replicas or 1) != replicas
                or abs((current.duplicate_window or 0) - duplicate_window) > 1e-6
            ):
                config.storage = current.storage
                await js.update_stream(config)
                self._logger.info("stream updated", stream=name, subjects=list(subjects))
        except nats.js.errors.APIError as exc:
            raise ServiceUnavailable(
                f"JetStream refused stream {name}: {exc.description or exc.code}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"stream": name},
            ) from exc
        except Exception as exc:
            raise ServiceUnavailable(
                f"JetStream did not answer for stream {name}: {_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"stream": name},
            ) from exc

    async def ensure_streams(self) -> None:
        """Ensure the event stream and its dead-letter stream."""
        s = self.settings
        await self.ensure_stream(
            s.stream,
            [f"{s.prefix}.>"],
            storage=s.storage,
            replicas=s.replicas,
            duplicate_window=s.duplicate_window,
        )
        await self.ensure_stream(
            s.dead_stream,
            [f"{s.dead_prefix}.>"],
            storage=s.storage,
            replicas=s.replicas,
            duplicate_window=s.duplicate_window,
        )

    # --- publishing with acks --------------------------------------------------------

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject[len(self._reply_prefix) :], None)
        if future is None or future.done():
            return
        if not msg.data:
            status = (msg.headers or {}).get(_STATUS)
            if status == "503":
                future.set_exception(_NoResponders())
            else:
                future.set_exception(_AckError(int(status or 0), 0, "status without PubAck"))
            return
        try:
            resp = orjson.loads(msg.data)
            error = resp.get("error")
            if error is not None:
                future.set_exception(
                    _AckError(
                        int(error.get("code", 0)),
                        int(error.get("err_code", 0)),
                        str(error.get("description", "")),
                    )
                )
            else:
                future.set_result(
                    PublishAck(resp["stream"], int(resp["seq"]), bool(resp.get("duplicate")))
                )
        except Exception as exc:
            future.set_exception(exc)

    async def _send(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[PublishAck]:
        """Publish with a reply inbox; the future resolves with the PubAck."""
        nc = self.client
        token = str(next(self._tokens))
        future: asyncio.Future[PublishAck] = asyncio.get_running_loop().create_future()
        self._acks[token] = future
        try:
            await nc.publish(subject, body, reply=self._reply_prefix + token, headers=headers)
        except BaseException:
            self._acks.pop(token, None)
            raise
        return future

    async def _request(
        self, subject: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> PublishAck:
        future = await self._send(subject, body, headers)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if not future.done():
                future.cancel()

    def _map_publish_error(self, exc: BaseException, subject: str, attempts: int) -> Exception:
        if isinstance(exc, ServiceUnavailable | BadRequest):
            return exc
        if isinstance(exc, nats.errors.MaxPayloadError):
            return BadRequest(
                "event is larger than the server's max payload", details={"subject": subject}
            )
        if isinstance(exc, nats.errors.ConnectionClosedError):
            return ServiceUnavailable(
                "NATS connection is closed",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"subject": subject},
            )
        if isinstance(exc, _AckError):
            return ServiceUnavailable(
                f"JetStream refused the event: {exc}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"subject": subject, "attempts": attempts},
            )
        return ServiceUnavailable(
            f"JetStream did not confirm the event after {attempts} attempts: {_reason(exc)}",
            code=ErrorCode.BROKER_UNAVAILABLE,
            details={"subject": subject, "attempts": attempts},
        )

    async def _after_failure(self, exc: BaseException, subject: str, attempt: int) -> None:
        self._logger.warning(
            "publish not confirmed; retrying",
            subject=subject,
            attempt=attempt,
            reason=_reason(exc),
        )
        if isinstance(exc, nats.errors.NoRespondersError):
            # The stream may be gone (deleted, or a memory-storage server restarted).
            with contextlib.suppress(Exception):
                await self.ensure_streams()

    async def publish_message(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> PublishAck:
        """Publish one wire message and await its PubAck, retrying transient failures
        ``publish_retries`` times with exponential backoff (same message, same id)."""
        s = self.settings
        delay = s.publish_backoff
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self._request(subject, body, headers, s.publish_timeout)
            except Exception as exc:
                if not _is_retryable(exc) or attempts > s.publish_retries:
                    raise self._map_publish_error(exc, subject, attempts) from exc
                await self._after_failure(exc, subject, attempts)
            await self._clock.sleep(min(delay, s.publish_backoff_max))
            delay *= 2

    async def publish_messages(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]]
    ) -> list[PublishAck]:
        """Publish many wire messages pipelined; acks in order, with retries of the
        ones that got none (under the same ids)."""
        s = self.settings
        results: list[PublishAck | None] = [None] * len(messages)
        todo = list(range(len(messages)))
        last: BaseException | None = None
        for round_ in range(s.publish_retries + 1):
            if round_:
                assert last is not None
                await self._after_failure(last, messages[todo[0]][0], round_)
                delay = s.publish_backoff * 2 ** (round_ - 1)
                await self._clock.sleep(min(delay, s.publish_backoff_max))
            failed: list[int] = []
            try:
                last = await self._pipeline(messages, todo, results, failed)
            except Exception as exc:
                raise self._map_publish_error(exc, messages[todo[0]][0], round_ + 1) from exc
            if not failed:
                return cast(list[PublishAck], results)
            todo = failed
        assert last is not None
        error = self._map_publish_error(last, messages[todo[0]][0], s.publish_retries + 1)
        if isinstance(error, ServiceUnavailable) and error.code == ErrorCode.BROKER_UNAVAILABLE:
            error = ServiceUnavailable(
                f"{len(todo)} of {len(messages)} events were not confirmed by JetStream "
                f"after {s.publish_retries + 1} attempts; the others are stored (publishing "
                "the batch again is safe: ids dedupe)",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"unconfirmed": len(todo), "total": len(messages)},
            )
        raise error from last

    async def _pipeline(
        self,
        messages: Sequence[tuple[str, bytes, dict[str, str]]],
        todo: list[int],
        results: list[PublishAck | None],
        failed: list[int],
    ) -> BaseException | None:
        """Send ``todo`` with at most ``publish_window`` acks outstanding; fill
        ``results``; list in ``failed`` what got no ack; return the last failure."""
        window = self.settings.publish_window
        timeout = self.settings.publish_timeout
        last: BaseException | None = None
        inflight: dict[asyncio.Future[PublishAck], int] = {}

        def settle(done: set[asyncio.Future[PublishAck]]) -> None:
            nonlocal last
            for future in done:
                index = inflight.pop(future)
                exc = future.exception()
                if exc is None:
                    results[index] = future.result()
                elif _is_retryable(exc):
                    failed.append(index)
                    last = exc
                else:
                    raise exc

        for position, index in enumerate(todo):
            if len(inflight) >= window:
                done, _ = await asyncio.wait(
                    inflight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    failed.extend(todo[position:])
                    break
                settle(done)
            subject, body, headers = messages[index]
            try:
                inflight[await self._send(subject, body, headers)] = index
            except Exception as exc:
                if not _is_retryable(exc):
                    raise
                failed.append(index)
                last = exc
        else:
            if inflight:
                done, _ = await asyncio.wait(inflight, timeout=timeout)
                settle(done)
        for future, index in inflight.items():
            future.cancel()
            failed.append(index)
        if inflight or (failed and last is None):
            last = TimeoutError("no PubAck within the publish timeout")
        failed.sort()
        return last

    # --- subscriptions ---------------------------------------------------------------

    def _register(self, subscription: NatsSubscription) -> None:
        self._subscriptions.add(subscription)

    def _unregister(self, subscription: NatsSubscription) -> None:
        self._subscriptions.discard(subscription)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, _AckError):
        return exc.code == 503
    return _transient(exc)


class NatsPublisher:
    """:class:`ports.events.Publisher` on JetStream (see the module docstring)."""

    def __init__(self, connection: NatsConnection) -> None:
        self._connection = connection
        self._prefix = connection.settings.prefix + "."

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck:
        """Publish ``event`` and return once JetStream stored it (or deduped it)."""
        if not isinstance(event, Event):
            raise TypeError("publish takes an Event")
        wire = self._prefix + check_publish_subject(event.type if subject is None else subject)
        body, headers = event_codec.encode(event, request_id=request_id())
        return await self._connection.publish_message(wire, body, headers)

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]:
        """Publish ``events`` pipelined; their acks, in order."""
        rid = request_id()
        messages = []
        for event in events:
            if not isinstance(event, Event):
                raise TypeError("publish_many takes Events")
            wire = self._prefix + check_publish_subject(event.type if subject is None else subject)
            body, headers = event_codec.encode(event, request_id=rid)
            messages.append((wire, body, headers))
        if not messages:
            return []
        return await self._connection.publish_messages(messages)


class _Handoff:
    """The FIFO from the pull inbox to the worker tasks: the part of
    :class:`asyncio.Queue` the subscription uses (``put_nowait``, ``get_nowait``,
    ``get``, ``empty``; unbounded), without its size and join bookkeeping. It sits
    on every delivery."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: deque[_Delivery | None] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: _Delivery | None) -> None:
        self._items.append(item)
        if self._getters:
            self._wake_next()

    def get_nowait(self) -> _Delivery | None:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> _Delivery | None:
        items = self._items
        while not items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # in case it is still waiting
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if items and not getter.cancelled():
                    # Woken, then cancelled before taking the item: pass the wake-up on.
                    self._wake_next()
                raise
        return items.popleft()

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return


class NatsSubscription:
    """A running subscription: a durable pull consumer fed continuously (the
    :class:`ports.events.Subscription` port)."""

    def __init__(
        self,
        connection: NatsConnection,
        *,
        subject: str,
        durable: str,
        handler: Handler,
        max_deliver: int,
        ack_wait: float,
        backoff: tuple[float, ...],
        concurrency: int,
    ) -> None:
        s = connection.settings
        self._connection = connection
        self._logger = connection._logger
        self._clock = connection._clock
        self._subject = subject
        self._durable = durable
        self._wire_subject = f"{s.prefix}.{subject}"
        self._prefix_len = len(s.prefix) + 1
        self._handler = handler
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._backoff = backoff
        self._concurrency = concurrency
        self._batch = max(s.pull_batch, concurrency)
        self._expires = s.pull_expires
        self._heartbeat = max(0.05, s.pull_expires / 5)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{s.stream}.{durable}"
        self._inbox = ""
        self._client: _Client | None = None
        self._sub: NatsSubscription_ | None = None
        self._queue = _Handoff()
        self._tracked: dict[str, _Delivery] = {}
        self._requested = 0
        self._heard = 0  # messages heard on the inbox (deliveries and statuses)
        self._quiet = 0  # watchdog ticks in a row without one
        self._check_consumer = False
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []

    @property
    def subject(self) -> str:
        """The subject filter (relative to ``EVENTS_PREFIX``)."""
        return self._subject

    @property
    def durable(self) -> str:
        """The durable consumer this subscription belongs to."""
        return self._durable

    @property
    def running(self) -> bool:
        """Whether :meth:`stop` has not been called."""
        return not self._stopping

    def consumer_config(self) -> ConsumerConfig:
        """The durable consumer's configuration as this subscription wants it."""
        return ConsumerConfig(
            name=self._durable,
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=self._wire_subject,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=self._connection.settings.max_ack_pending,
        )

    async def ensure_consumer(self) -> None:
        """Create the durable consumer, or align an existing one's ack_wait;
        ``Conflict`` if it exists with another subject."""
        js = self._connection.jetstream
        stream = self._connection.settings.stream
        try:
            info = await js.consumer_info(stream, self._durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, self.consumer_config())
            return
        if info.config.filter_subject != self._wire_subject:
            current = info.config.filter_subject or ""
            raise Conflict(
                f"durable {self._durable!r} already consumes "
                f"{current[self._prefix_len :]!r}, not {self._subject!r}",
                details={"durable": self._durable},
            )
        if abs((info.config.ack_wait or 0) - self._ack_wait) > 1e-3:
            await js.add_consumer(stream, self.consumer_config())

    async def start(self) -> None:
        """Subscribe the pull inbox (on a direct lane), start the workers and the first
        pull."""
        nc = self._connection.client
        if not isinstance(nc, _Client):
            raise ConfigurationError("NatsSubscription needs a client made by NatsConnection")
        loop = asyncio.get_running_loop()
        self._client = nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox)
        nc.lanes[self._sub._id] = self._on_raw
        self._workers = [
            loop.create_task(self._work(), name=f"events:{self._durable}:{i}")
            for i in range(self._concurrency)
        ]
        self._tasks = [
            loop.create_task(self._keepalive(), name=f"events:{self._durable}:keepalive"),
            loop.create_task(self._watchdog(), name=f"events:{self._durable}:watchdog"),
        ]
        self._connection._register(self)
        await self._pull()

    # --- pulling ---------------------------------------------------------------------

    async def _pull(self) -> None:
        """Top up the outstanding pull request when half the batch is used."""
        if self._stopping:
            return
        want = self._batch - self._requested - len(self._tracked)
        if want <= 0 or (self._requested > 0 and want < self._batch // 2):
            return
        nc = self._connection._nc
        if nc is None or not nc.is_connected:
            return
        self._requested += want
        request = {
            "batch": want,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        try:
            await nc.publish(self._next_subject, orjson.dumps(request), reply=self._inbox)
        except Exception as exc:
            self._requested = 0
            self._logger.debug("pull request not sent", durable=self._durable, reason=_reason(exc))

    def _on_reconnected(self) -> None:
        self._requested = 0
        self._check_consumer = True
        self._quiet = 0

    def _on_raw(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> Awaitable[None] | None:
        """The inbox's lane: a delivery goes to the workers without an await; a
        status message (no reply subject) is handled before the next message."""
        self._heard += 1
        if not reply:
            return self._on_status(headers)
        if self._requested > 0:
            self._requested -= 1
        assert self._client is not None
        msg = _Delivery(self._client, subject, reply.decode(), data, headers)
        if self._stopping:
            return self._release(msg)
        self._tracked[msg.reply] = msg
        self._queue.put_nowait(msg)
        return None

    @staticmethod
    async def _release(msg: _Delivery) -> None:
        with contextlib.suppress(Exception):
            await msg.nak()

    async def _on_status(self, raw: bytes | None) -> None:
        status, description, headers = _status_of(raw)
        if status == "100":
            return  # idle heartbeat: the pull is alive
        pending = headers.get(_PENDING_MSGS)
        if status in ("408", "409") and pending is not None and pending.isdigit():
            self._requested = max(0, self._requested - int(pending))
        else:
            self._requested = 0
        if status not in ("408", "404"):
            self._logger.debug(
                "pull status", durable=self._durable, status=status, description=description
            )
        if status == "503" or (status == "409" and "deleted" in description.lower()):
            # No responders, or the consumer is gone: the watchdog re-creates it if
            # needed and pulls again after a heartbeat.
            self._check_consumer = True
            return
        await self._pull()

    async def _watchdog(self) -> None:
        """Re-issue a lost pull (no heartbeat) and re-create a lost consumer."""
        heard = self._heard
        while True:
            await self._clock.sleep(self._heartbeat)
            if self._stopping:
                return
            # Counting ticks, not reading the clock, keeps the per-message cost an add.
            if self._heard != heard:
                heard, self._quiet = self._heard, 0
            else:
                self._quiet += 1
            if self._requested > 0 and self._quiet > 3:
                self._requested = 0
                self._check_consumer = True
            if self._check_consumer and self._connection.connected:
                try:
                    await self._recreate_if_lost()
                    self._check_consumer = False
                except Exception as exc:
                    self._logger.debug(
                        "consumer check failed", durable=self._durable, reason=_reason(exc)
                    )
                    continue
            await self._pull()

    async def _recreate_if_lost(self) -> None:
        js = self._connection.jetstream
        stream = self._connection.settings.stream
        try:
            await js.consumer_info(stream, self._durable)
        except nats.js.errors.NotFoundError:
            self._logger.warning("consumer lost; re-creating it", durable=self._durable)
            try:
                await js.add_consumer(stream, self.consumer_config())
            except nats.js.errors.NotFoundError:
                await self._connection.ensure_streams()
                await js.add_consumer(stream, self.consumer_config())
        self._quiet = 0

    async def _keepalive(self) -> None:
        """Tell the server that held messages are in progress, every ack_wait / 2."""
        interval = max(0.02, self._ack_wait / 2)
        while True:
            await self._clock.sleep(interval)
            if self._stopping:
                return
            for msg in list(self._tracked.values()):
                try:
                    await msg.in_progress()
                except Exception as exc:
                    self._logger.debug("in-progress not sent", reason=_reason(exc))
                    break

    # --- handling --------------------------------------------------------------------

    async def _work(self) -> None:
        queue = self._queue
        tracked = self._tracked
        while True:
            try:
                msg = queue.get_nowait()
            except asyncio.QueueEmpty:
                msg = await queue.get()
            if msg is None:
                return
            try:
                await self._process(msg)
            finally:
                tracked.pop(msg.reply, None)
            if self._batch - self._requested - len(tracked) >= self._batch // 2:
                await self._pull()

    async def _process(self, msg: _Delivery) -> None:
        reply = msg.reply
        attempt = _attempt(reply)
        headers = msg.lowered_headers()
        try:
            try:
                decoded = event_codec.decode_message(msg.data, headers, lowered=True)
            except event_codec.EventDecodeError:
                # The broker's storage time stands in for a missing ce-time. Decoding
                # is pure, so any other problem recurs; building the datetime only
                # here saves it on every well-formed event.
                decoded = event_codec.decode_message(
                    msg.data, headers, lowered=True, default_time=_reply_info(reply)[1]
                )
        except event_codec.EventDecodeError as exc:
            await self._undecodable(msg, attempt, exc.message)
            return
        event = decoded.event
        if attempt > self._max_deliver:
            await self._dead_letter(msg, REASON_MAX_DELIVER, attempt, "delivery limit reached")
            return
        try:
            with bind_context(
                request_id=decoded.request_id,
                event_id=event.id,
                event_type=event.type,
                organization_id=event.organization_id,
                attempt=attempt,
            ):
                await self._handler(event)
        except Reject as exc:
            await self._dead_letter(msg, REASON_REJECTED, attempt, exc.reason)
        except Exception as exc:
            await self._failed(msg, event, attempt, exc)
        except BaseException:
            # Killed mid-event: let the next delivery happen now, not after ack_wait.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        else:
            try:
                await msg._nc.publish(reply, b"")  # msg.ack(), one call fewer
            except Exception as exc:
                self._logger.warning(
                    "ack not sent; the event will be redelivered",
                    event_id=event.id,
                    reason=_reason(exc),
                )

    async def _undecodable(self, msg: _Delivery, attempt: int, problem: str) -> None:
        self._logger.error(
            "undecodable event dead-lettered",
            subject=msg.subject,
            durable=self._durable,
            reason=problem,
        )
        await self._dead_letter(msg, REASON_UNDECODABLE, attempt, problem)

    async def _failed(self, msg: _Delivery, event: Event, attempt: int, exc: Exception) -> None:
        if attempt >= self._max_deliver:
            self._logger.error(
                "event handler failed for the last time; dead-lettered",
                exc=exc,
                event_id=event.id,
                durable=self._durable,
                attempt=attempt,
            )
            await self._dead_letter(msg, REASON_MAX_DELIVER, attempt, describe(exc))
            return
        delay = backoff_delay(self._backoff, attempt)
        self._logger.warning(
            "event handler failed; will retry",
            event_id=event.id,
            durable=self._durable,
            attempt=attempt,
            retry_in_s=delay,
            failure=describe(exc),
        )
        try:
            await msg.nak(delay=delay if delay > 0 else None)
        except Exception as nak_exc:
            self._logger.warning("nak not sent", event_id=event.id, reason=_reason(nak_exc))

    async def _dead_letter(self, msg: _Delivery, reason: str, attempts: int, error: str) -> None:
        connection = self._connection
        s = connection.settings
        subject = msg.subject[self._prefix_len :]
        headers = msg.headers
        original_id = None
        for key in list(headers):
            if key.lower() == event_codec.H_MSG_ID.lower():
                original_id = headers.pop(key)
        if original_id is not None:
            headers[H_DEAD_MSG_ID] = original_id
        headers.update(
            {
                H_DEAD_SUBJECT: event_codec.header_value(subject),
                H_DEAD_DURABLE: self._durable,
                H_DEAD_REASON: reason,
                H_DEAD_ATTEMPTS: str(attempts),
                H_DEAD_ERROR: event_codec.header_value(error),
                # Dedupe the dead letter itself: once per (durable, stream sequence).
                event_codec.H_MSG_ID: f"{self._durable}:{msg.stream_sequence}",
            }
        )
        try:
            await connection.publish_message(
                f"{s.dead_prefix}.{self._durable}.{subject}", msg.data, headers
            )
        except Exception as exc:
            self._logger.error(
                "dead letter not stored; the event will come back",
                exc=exc,
                durable=self._durable,
                reason=reason,
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=max(self._backoff or (1.0,)))
            return
        self._logger.warning(
            "event dead-lettered", durable=self._durable, reason=reason, attempts=attempts
        )
        with contextlib.suppress(Exception):
            await msg.term()

    # --- stopping --------------------------------------------------------------------

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; release messages not started (nak, for the durable's other
        members); let running handlers finish and ack for up to ``timeout`` seconds,
        then cancel them (their events are nak'ed). Idempotent, concurrency-safe."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop(timeout))
        await asyncio.shield(self._stopped)

    async def _stop(self, timeout: float) -> None:
        self._stopping = True
        sub = self._sub
        nc = self._connection._nc
        if sub is not None and nc is not None and not nc.is_closed:
            try:
                # Unsubscribe and flush: after this no message of ours is in flight.
                await asyncio.wait_for(
                    sub.drain(),  # type: ignore[no-untyped-call]
                    timeout=max(0.1, min(timeout, 2.0)),
                )
            except Exception:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if sub is not None and self._client is not None:
            self._client.lanes.pop(sub._id, None)
        released: list[_Delivery] = []
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if msg is not None:
                released.append(msg)
                self._tracked.pop(msg.reply, None)
        for msg in released:
            with contextlib.suppress(Exception):
                await msg.nak()
        for _ in self._workers:
            self._queue.put_nowait(None)
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=max(0.0, timeout))
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._connection._unregister(self)


def _attempt(reply: str) -> int:
    """The delivery count from a JetStream ack subject (see :func:`_reply_info`)."""
    tokens = reply.split(".")
    return int(tokens[4 if len(tokens) == 9 else 6])


def _reply_info(reply: str) -> tuple[int, datetime]:
    """The delivery count and storage time from a JetStream ack subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or the
    v2 form with ``<domain>.<account hash>`` after ``ACK`` (and a token at the end)."""
    tokens = reply.split(".")
    offset = 0 if len(tokens) == 9 else 2
    return int(tokens[4 + offset]), datetime.fromtimestamp(int(tokens[7 + offset]) / 1e9, UTC)


class NatsSubscriber:
    """:class:`ports.events.Subscriber` on JetStream durable pull consumers."""

    def __init__(self, connection: NatsConnection) -> None:
        self._connection = connection

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        durable: str,
        max_deliver: int = DEFAULT_MAX_DELIVER,
        ack_wait: float = DEFAULT_ACK_WAIT,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        concurrency: int = 1,
    ) -> NatsSubscription:
        """Start consuming ``subject`` (relative, wildcards allowed) as ``durable``.

        ``Conflict`` if the durable exists with another subject; ``BadRequest``
        for an invalid subject, durable or option; ``ServiceUnavailable`` when
        JetStream does not answer.
        """
        check_subscribe_subject(subject)
        check_durable(durable)
        delays = check_subscribe_options(
            max_deliver=max_deliver, ack_wait=ack_wait, backoff=backoff, concurrency=concurrency
        )
        subscription = NatsSubscription(
            self._connection,
            subject=subject,
            durable=durable,
            handler=handler,
            max_deliver=max_deliver,
            ack_wait=float(ack_wait),
            backoff=delays,
            concurrency=concurrency,
        )
        try:
            await subscription.ensure_consumer()
            await subscription.start()
        except (Conflict, ServiceUnavailable):
            raise
        except Exception as exc:
            raise ServiceUnavailable(
                f"JetStream did not set up durable {durable!r}: {_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"durable": durable},
            ) from exc
        return subscription

    async def dead_letters(self, *, limit: int = 1000, timeout: float = 5.0) -> list[DeadLetter]:
        """The dead letters stored so far (oldest first, at most ``limit``)."""
        connection = self._connection
        s = connection.settings
        js = connection.jetstream
        try:
            info = await js.stream_info(s.dead_stream)
            count = min(limit, info.state.messages)
            if count == 0:
                return []
            sub = await js.subscribe(
                f"{s.dead_prefix}.>", stream=s.dead_stream, ordered_consumer=True
            )
            letters = []
            try:
                for _ in range(count):
                    msg = await sub.next_msg(timeout=timeout)
                    letters.append(_dead_letter_from(msg))
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        except Exception as exc:
            raise ServiceUnavailable(
                f"JetStream did not return the dead letters: {_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"stream": s.dead_stream},
            ) from exc
        return letters


def _dead_letter_from(msg: Msg) -> DeadLetter:
    raw = dict(msg.headers or {})
    lowered = {k.lower(): v for k, v in raw.items()}
    headers = {k: v for k, v in raw.items() if k.lower() not in _DEAD_HEADERS}
    original_id = lowered.get(H_DEAD_MSG_ID.lower())
    if original_id is not None:
        headers[event_codec.H_MSG_ID] = original_id
    event: Event | None
    try:
        event = event_codec.decode(msg.data, headers, default_time=msg.metadata.timestamp)
    except event_codec.EventDecodeError:
        event = None
    attempts = lowered.get(H_DEAD_ATTEMPTS.lower(), "0")
    error = lowered.get(H_DEAD_ERROR.lower())
    return DeadLetter(
        subject=event_codec.header_text(lowered.get(H_DEAD_SUBJECT.lower(), "")),
        durable=lowered.get(H_DEAD_DURABLE.lower(), ""),
        reason=lowered.get(H_DEAD_REASON.lower(), ""),
        attempts=int(attempts) if attempts.isdigit() else 0,
        event=event,
        payload=bytes(msg.data),
        headers=headers,
        error=event_codec.header_text(error) if error is not None else None,
    )
