"""NatsConnection: one NATS client with JetStream, its streams, and acked publishing."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Literal, cast

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription_
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from adapters._event_rules import DEFAULT_MAX_PAYLOAD, NullLogger, check_wire_size
from adapters._log_fields import RepeatLimiter
from adapters.nats_events._errors import AckError, NoResponders, failure_reason, is_retryable
from adapters.nats_events._internals import lanes_supported, new_client
from adapters.nats_events.settings import NatsSettings, redact_url
from domain_errors import BadRequest, ConfigurationError, ErrorCode, ServiceUnavailable
from ports.clock import Clock, SystemClock
from ports.config import ConfigSource
from ports.events import PublishAck
from ports.logger import Logger

if TYPE_CHECKING:
    from adapters.nats_events.subscription import NatsSubscription

__all__ = ["NatsConnection"]

_STATUS: Final = "Status"
_DEFAULT_SERVICE: Final = "hexinfra"
_MESSAGE_TOO_LARGE: Final = 10054  # JetStream: message size exceeds maximum allowed
_ERROR_REPEAT_INTERVAL: Final = 30.0  # s between two identical "nats client error" lines
_UTF8_MAX: Final = 4  # bytes per character, at most


def _check_size(subject: str, body: bytes, headers: dict[str, str], limit: int) -> None:
    """:func:`check_wire_size`, skipped when a cheap upper bound already fits."""
    chars = sum(map(len, headers)) + sum(map(len, headers.values())) + len(headers)
    if len(body) + _UTF8_MAX * chars + 12 > limit:
        check_wire_size(subject, body, headers, limit)


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
        self._replacer: asyncio.Task[None] | None = None
        self._where = ",".join(redact_url(s) for s in settings.servers)
        self._direct = True
        self._stream_limits: dict[str, int] = {}
        self._error_repeats = RepeatLimiter(_ERROR_REPEAT_INTERVAL)

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
        ``connect()``, after ``close()``, and while a client the server closed is being
        replaced (reason ``replacing``)."""
        nc = self._nc
        if nc is None or self._state != "open":
            raise ServiceUnavailable(
                "NATS connection is not open (call connect() first)",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": self._state},
            )
        if nc.is_closed:
            raise ServiceUnavailable(
                "the NATS server closed the client; replacing it",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "replacing" if self._replacing else "closed by server"},
            )
        return nc

    @property
    def _replacing(self) -> bool:
        return self._replacer is not None and not self._replacer.done()

    @property
    def max_payload(self) -> int:
        """The largest message (headers and body) the server accepts, as the current
        client last heard it (NATS's default, 1 MiB, before any connect). Never raises."""
        nc = self._nc
        return nc.max_payload if nc is not None else DEFAULT_MAX_PAYLOAD

    def message_limit(self, stream: str) -> int:
        """The largest message (headers and body) ``stream`` stores: the server's max
        payload, or less when the stream has a ``max_msg_size`` (an operator's limit
        on a stream that existed, read at connect)."""
        limit = self._stream_limits.get(stream, 0)
        return min(self.max_payload, limit) if limit > 0 else self.max_payload

    def _limit_for(self, subject: str) -> int:
        s = self.settings
        dead = subject.startswith(s.dead_prefix + ".")
        return self.message_limit(s.dead_stream if dead else s.stream)

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
        self._direct = lanes_supported()
        if not self._direct:
            self._logger.warning(
                "installed nats-py does not match the direct lane; using its public API",
                nats_py=importlib.metadata.version("nats-py"),
            )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    client = new_client(direct=self._direct)
                    await self._connect_client(client)
                    self._nc = client
        except Exception as exc:
            self._state = "new"
            raise ServiceUnavailable(
                f"NATS at {self._where} did not accept a connection after {attempts} "
                f"attempts: {failure_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "connect", "attempts": attempts},
            ) from exc
        nc = self._nc
        assert nc is not None
        await self._install(nc)
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
        if s.service == _DEFAULT_SERVICE:
            self._logger.warning(
                "SERVICE_NAME is not set: consumers are named "
                f"{_DEFAULT_SERVICE}-<durable>, shared with every other service that "
                "leaves it unset; set SERVICE_NAME so that groups never split events",
            )

    async def _connect_client(self, client: NatsClient) -> None:
        """Connect ``client`` with this connection's options and callbacks."""
        s = self.settings
        await client.connect(
            servers=s.servers,
            name=s.name,
            connect_timeout=max(1, round(s.connect_timeout)),
            # Annotated int by nats-py, used as asyncio.sleep's delay.
            reconnect_time_wait=s.reconnect_wait,  # type: ignore[arg-type]
            # nats-py loops forever on a first connect when this is -1:
            # tenacity (or the replacement loop) owns first-connect retries.
            max_reconnect_attempts=1,
            allow_reconnect=True,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            drain_timeout=30,
        )

    async def _install(self, nc: NatsClient) -> None:
        """Make the connected ``nc`` this connection's client: reconnect forever, a
        JetStream context, and the PubAck reply inbox."""
        # Once connected, reconnect forever (read by nats-py at each reconnect).
        nc.options["max_reconnect_attempts"] = -1
        self._js = nc.jetstream(timeout=self.settings.api_timeout)
        self._reply_prefix = nc.new_inbox() + "."
        self._reply_sub = await nc.subscribe(self._reply_prefix + "*", cb=self._on_ack)

    def _log_connect_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        self._logger.warning(
            "nats not reachable, retrying",
            servers=self._where,
            attempt=state.attempt_number,
            of=self.settings.connect_retries,
            retry_in_s=round(delay, 3),
            reason=failure_reason(exc) if exc is not None else "",
        )

    def _server(self) -> str:
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        return f"{url.hostname}:{url.port}" if url is not None else "?"

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports every failed reconnect attempt (each reconnect_wait, for as
        # long as the server is away): the same reason is written once per interval.
        reason = failure_reason(exc)
        withheld = self._error_repeats.admit(reason)
        if withheld is None:
            return
        if withheld:
            self._logger.warning("nats client error", reason=reason, repeated=withheld)
        else:
            self._logger.warning("nats client error", reason=reason)

    async def _on_disconnected(self) -> None:
        nc = self._nc
        if self._state == "open" and nc is not None and not nc.is_closed:
            self._logger.warning("nats disconnected; reconnecting", servers=self._where)

    async def _on_reconnected(self) -> None:
        self._logger.info("nats reconnected", server=self._server())
        for subscription in list(self._subscriptions):
            subscription._on_reconnected()

    async def _on_closed(self) -> None:
        """nats-py closed a client. Ours closing (``close()``) ends here; a client the
        server closed for good (``-ERR``, auth expiry, anything else) while the
        connection is open is replaced in the background."""
        nc = self._nc
        if self._state != "open" or nc is None or not nc.is_closed:
            if self._state == "closed":
                self._logger.info("nats connection closed", servers=self._where)
            return
        if self._replacing:
            return
        last = nc.last_error
        self._logger.error(
            "nats server closed the client for good; replacing it",
            servers=self._where,
            reason=failure_reason(last) if last is not None else "closed",
        )
        self._fail_pending("the NATS server closed the client; replacing it")
        self._replacer = asyncio.get_running_loop().create_task(
            self._replace(), name="nats:replace-client"
        )

    async def _replace(self) -> None:
        """Build a new client (retrying forever, backoff capped as at connect), install
        it, then let every subscription subscribe again on it; again if the server
        closes the new one meanwhile."""
        began = self._clock.monotonic()
        attempts = 0
        while True:
            attempts += await self._replace_once()
            nc = self._nc
            if nc is not None and not nc.is_closed:
                break
            self._fail_pending("the NATS server closed the client; replacing it")
        self._logger.info(
            "nats client replaced",
            server=self._server(),
            attempts=attempts,
            took_s=round(self._clock.monotonic() - began, 3),
        )

    async def _replace_once(self) -> int:
        s = self.settings
        delay = s.connect_backoff
        cap = max(s.connect_backoff, 0.1) * 16
        attempts = 0
        while True:
            attempts += 1
            client = new_client(direct=self._direct)
            try:
                await self._connect_client(client)
                # Until installed, _on_closed ignores this client (it is not _nc).
                await self._install(client)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await client.close()
                raise
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await client.close()
                self._logger.warning(
                    "nats client not replaced yet; retrying",
                    servers=self._where,
                    attempt=attempts,
                    retry_in_s=round(min(delay, cap), 3),
                    reason=failure_reason(exc),
                )
                await self._clock.sleep(min(delay, cap))
                delay *= 2
                continue
            break
        self._nc = client
        try:
            # A server that closed us may have restarted without its streams.
            await self.ensure_streams()
        except Exception as exc:
            self._logger.warning(
                "streams not ensured after replacing the client", reason=failure_reason(exc)
            )
        for subscription in list(self._subscriptions):
            try:
                # The pull inbox again, on the current client; then it pulls.
                await subscription.resubscribe()
            except Exception as exc:
                self._logger.error(
                    "subscription not resumed on the new nats client",
                    exc=exc,
                    durable=subscription.durable,
                )
        return attempts

    def _fail_pending(self, message: str) -> None:
        """Fail every publish still waiting for a PubAck (none will come)."""
        acks, self._acks = self._acks, {}
        for future in acks.values():
            if not future.done():
                future.set_exception(ServiceUnavailable(message, code=ErrorCode.BROKER_UNAVAILABLE))

    async def health_check(self) -> None:
        """``ServiceUnavailable`` unless connected and JetStream answers (reason
        ``replacing`` while a client the server closed is being replaced, until its
        subscriptions resumed)."""
        js = self.jetstream
        if self._replacing:
            raise ServiceUnavailable(
                "NATS client being replaced (subscriptions resuming)",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "replacing"},
            )
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
                f"JetStream did not answer: {failure_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "health"},
            ) from exc
        broken = sorted(s.durable for s in self._subscriptions if s.problem is not None)
        if broken:
            raise ServiceUnavailable(
                f"subscriptions cannot go on: {', '.join(broken)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"reason": "subscription", "durables": broken},
            )

    async def close(self, timeout: float = 10.0) -> None:
        """Stop subscriptions (handlers finish), drain and close. Idempotent."""
        if self._state in ("closed", "new"):
            self._state = "closed"
            return
        self._state = "closed"
        await self._stop_replacing()
        await asyncio.gather(
            *(s.stop(timeout) for s in list(self._subscriptions)), return_exceptions=True
        )
        await self._shutdown(timeout)

    async def _stop_replacing(self) -> None:
        replacer, self._replacer = self._replacer, None
        if replacer is not None and not replacer.done():
            replacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replacer

    async def _shutdown(self, timeout: float) -> None:
        self._state = "closed"
        self._fail_pending("NATS connection closed")
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        try:
            await asyncio.wait_for(nc.drain(), timeout=max(0.1, timeout))
        except Exception as exc:
            self._logger.warning("nats drain did not finish; closing", reason=failure_reason(exc))
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
        max_age: float = 0.0,
        max_bytes: int = -1,
    ) -> None:
        """Create stream ``name`` when it is missing (with these settings; ``max_age``
        0 and ``max_bytes`` -1 mean no limit); a stream that exists is never modified.

        ``ConfigurationError`` naming the stream when the existing stream does not
        capture ``subjects``, or when creating it is refused because its subjects
        overlap another stream's. Another service creating it at the same moment is
        fine (it is then checked as an existing one). ``ServiceUnavailable`` when
        JetStream refuses otherwise or does not answer.
        """
        js = self.jetstream
        config = StreamConfig(
            name=name,
            subjects=list(subjects),
            storage=StorageType.FILE if storage == "file" else StorageType.MEMORY,
            num_replicas=replicas,
            duplicate_window=duplicate_window,
            max_age=max_age,
            max_bytes=max_bytes,
        )
        try:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(config)
                except nats.js.errors.APIError as exc:
                    if exc.err_code == _OVERLAP:
                        raise await self._overlap_error(name, subjects) from exc
                    if exc.err_code != _NAME_IN_USE:
                        raise
                    # Created meanwhile by another service: check it like any other.
                    info = await js.stream_info(name)
                else:
                    self._logger.info(
                        "stream created",
                        stream=name,
                        subjects=list(subjects),
                        max_age_s=max_age,
                        max_bytes=max_bytes,
                    )
                    return
            _check_captures(name, info.config.subjects or [], subjects)
            self._stream_limits[name] = info.config.max_msg_size or 0
        except ConfigurationError:
            raise
        except nats.js.errors.APIError as exc:
            raise ServiceUnavailable(
                f"JetStream refused stream {name}: {exc.description or exc.code}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"stream": name},
            ) from exc
        except Exception as exc:
            raise ServiceUnavailable(
                f"JetStream did not answer for stream {name}: {failure_reason(exc)}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"stream": name},
            ) from exc

    async def _overlap_error(self, name: str, subjects: Sequence[str]) -> ConfigurationError:
        """The error for a stream JetStream refused to create: its subjects overlap
        another stream's (named when JetStream tells which)."""
        others: list[str] = []
        for subject in subjects:
            with contextlib.suppress(Exception):
                other = await self.jetstream.find_stream_name_by_subject(subject)
                if other not in others:
                    others.append(other)
        where = f"stream {', '.join(others)}" if others else "an existing stream"
        return ConfigurationError(
            f"stream {name} cannot be created: its subjects {', '.join(subjects)} overlap "
            f"the subjects of {where} (give this service its own EVENTS_PREFIX, or use "
            "that stream's EVENTS_STREAM and EVENTS_PREFIX)",
            details={"stream": name, "subjects": list(subjects), "overlaps": others},
        )

    async def ensure_streams(self) -> None:
        """Ensure the event stream and its dead-letter stream (created when missing
        with the configured limits; never modified when they exist)."""
        s = self.settings
        await self.ensure_stream(
            s.stream,
            [f"{s.prefix}.>"],
            storage=s.storage,
            replicas=s.replicas,
            duplicate_window=s.duplicate_window,
            max_age=s.max_age,
            max_bytes=s.max_bytes,
        )
        await self.ensure_stream(
            s.dead_stream,
            [f"{s.dead_prefix}.>"],
            storage=s.storage,
            replicas=s.replicas,
            duplicate_window=s.duplicate_window,
            max_age=s.dead_max_age,
        )

    # --- publishing with acks --------------------------------------------------------

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject[len(self._reply_prefix) :], None)
        if future is None or future.done():
            return
        if not msg.data:
            status = (msg.headers or {}).get(_STATUS)
            if status == "503":
                future.set_exception(NoResponders())
            else:
                future.set_exception(AckError(int(status or 0), 0, "status without PubAck"))
            return
        try:
            resp = orjson.loads(msg.data)
            error = resp.get("error")
            if error is not None:
                future.set_exception(
                    AckError(
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
        if isinstance(exc, nats.errors.BadHeaderError):
            return BadRequest(
                f"header name {exc.key!r} cannot be sent (not a token)",
                details={"subject": subject},
            )
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
        if isinstance(exc, AckError) and exc.err_code == _MESSAGE_TOO_LARGE:
            return BadRequest(
                f"the stream refused the event as too large: {exc}",
                details={"subject": subject},
            )
        if isinstance(exc, AckError):
            return ServiceUnavailable(
                f"JetStream refused the event: {exc}",
                code=ErrorCode.BROKER_UNAVAILABLE,
                details={"subject": subject, "attempts": attempts},
            )
        return ServiceUnavailable(
            f"JetStream did not confirm the event after {attempts} attempts: {failure_reason(exc)}",
            code=ErrorCode.BROKER_UNAVAILABLE,
            details={"subject": subject, "attempts": attempts},
        )

    async def _after_failure(self, exc: BaseException, subject: str, attempt: int) -> None:
        self._logger.warning(
            "publish not confirmed; retrying",
            subject=subject,
            attempt=attempt,
            reason=failure_reason(exc),
        )
        if isinstance(exc, nats.errors.NoRespondersError):
            # The stream may be gone (deleted, or a memory-storage server restarted).
            with contextlib.suppress(Exception):
                await self.ensure_streams()

    async def publish_message(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> PublishAck:
        """Publish one wire message and await its PubAck, retrying transient failures
        ``publish_retries`` times with exponential backoff (same message, same id).
        ``BadRequest`` naming both sizes, before anything is sent, when headers and
        body exceed the server's max payload (the server would close the client)."""
        _check_size(subject, body, headers, self._limit_for(subject))
        s = self.settings
        delay = s.publish_backoff
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self._request(subject, body, headers, s.publish_timeout)
            except Exception as exc:
                if not is_retryable(exc) or attempts > s.publish_retries:
                    raise self._map_publish_error(exc, subject, attempts) from exc
                await self._after_failure(exc, subject, attempts)
            await self._clock.sleep(min(delay, s.publish_backoff_max))
            delay *= 2

    async def publish_messages(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]]
    ) -> list[PublishAck]:
        """Publish many wire messages pipelined; acks in order, with retries of the
        ones that got none (under the same ids). Every message is measured against
        the server's max payload before any is sent (``BadRequest``: none sent)."""
        for subject, body, headers in messages:
            _check_size(subject, body, headers, self._limit_for(subject))
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
                elif is_retryable(exc):
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
                if not is_retryable(exc):
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


# --- streams shared by several services ----------------------------------------------

_NAME_IN_USE: Final = 10058  # JetStream: "stream name already in use"
_OVERLAP: Final = 10065  # JetStream: "subjects overlap with an existing stream"


def _captures(pattern: str, wanted: str) -> bool:
    """Whether stream subject ``pattern`` captures every subject ``wanted`` matches
    (both may hold ``*`` and ``>``)."""
    have, want = pattern.split("."), wanted.split(".")
    for i, part in enumerate(have):
        if part == ">":
            return i < len(want)
        if i >= len(want) or want[i] == ">":
            return False
        if part != "*" and part != want[i]:
            return False
    return len(have) == len(want)


def _check_captures(name: str, have: Sequence[str], wanted: Sequence[str]) -> None:
    """``ConfigurationError`` naming stream ``name`` unless its subjects ``have``
    capture every subject in ``wanted``."""
    missing = [w for w in wanted if not any(_captures(h, w) for h in have)]
    if missing:
        raise ConfigurationError(
            f"stream {name} exists but does not capture {', '.join(missing)} (its subjects: "
            f"{', '.join(have) or 'none'}); it is left as is: add the subjects to it, or "
            "configure another EVENTS_STREAM / EVENTS_PREFIX",
            details={"stream": name, "missing": missing, "subjects": list(have)},
        )
