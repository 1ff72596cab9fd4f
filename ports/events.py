"""Events: the Event value, Publisher, Subscriber, Subscription, Handler, Reject."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

import attrs

from domain_errors import BadRequest

__all__ = [
    "Event",
    "PublishAck",
    "DeadLetter",
    "Handler",
    "Reject",
    "Publisher",
    "Subscriber",
    "Subscription",
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_DELIVER",
    "DEFAULT_ACK_WAIT",
]

DEFAULT_MAX_DELIVER: Final = 5
DEFAULT_ACK_WAIT: Final = 30.0
DEFAULT_BACKOFF: Final[tuple[float, ...]] = (0.5, 1.0, 2.0, 5.0, 10.0)


def _new_id() -> str:
    return str(uuid.uuid4())


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_text(instance: Event, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(
            f"event {attribute.name} must be a non-empty string",
            details={"field": attribute.name},
        )


def _check_timestamp(
    instance: Event, attribute: attrs.Attribute[datetime], value: datetime
) -> None:
    if not isinstance(value, datetime):
        raise BadRequest("event timestamp must be a datetime", details={"field": "timestamp"})
    if value.tzinfo is None or value.utcoffset() is None:
        raise BadRequest(
            "event timestamp must be timezone-aware (UTC)", details={"field": "timestamp"}
        )


def _to_utc(value: datetime) -> datetime:
    if isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None:
        return value.astimezone(UTC)
    return value


def _json_problem(value: Any, path: str, depth: int = 0) -> str | None:
    if depth > 64:
        return f"{path} is nested too deeply"
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is not a finite number"
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path} has a non-string key"
            problem = _json_problem(v, f"{path}.{k}", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            problem = _json_problem(v, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__name__}, which is not JSON-compatible"


def _check_data(instance: Event, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping):
        raise BadRequest("event data must be a mapping", details={"field": "data"})
    problem = _json_problem(value, "data")
    if problem:
        raise BadRequest(f"event {problem}", details={"field": "data"})


def _plain(value: Any, depth: int = 0) -> Any:
    # A private deep copy in JSON's own shapes (dict, list), so that an event equals
    # its decoded round trip and later changes to the caller's objects do not leak in.
    if depth > 64:
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    return value


def _to_dict(value: Any) -> Any:
    return _plain(value) if isinstance(value, Mapping) else value


@attrs.frozen(kw_only=True)
class Event:
    """A fact that happened, published once and handled at least once.

    - ``id``: unique; the dedupe key end to end (generated when omitted).
    - ``type``: what happened, e.g. ``order.placed``; the default subject.
    - ``source``: who says so, e.g. ``orders-service``.
    - ``organization_id``: the tenant it belongs to.
    - ``timestamp``: when it happened, timezone-aware, normalised to UTC.
    - ``data``: a JSON-compatible mapping (str keys; None, bool, int, finite float,
      str, lists and mappings of those). Treat it as immutable.

    Invalid values raise :class:`domain_errors.BadRequest` naming the field.
    """

    type: str = attrs.field(validator=_check_text)
    source: str = attrs.field(validator=_check_text)
    organization_id: str = attrs.field(validator=_check_text)
    data: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_dict, validator=_check_data)
    id: str = attrs.field(factory=_new_id, validator=_check_text)
    timestamp: datetime = attrs.field(
        factory=_utc_now, converter=_to_utc, validator=_check_timestamp
    )

    def to_dict(self) -> dict[str, Any]:
        """The seed's JSON shape as a dict, ``timestamp`` as RFC 3339 with ``Z``."""
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "organization_id": self.organization_id,
            "timestamp": format_timestamp(self.timestamp),
            "data": self.data,
        }

    def to_json(self) -> str:
        """The seed's JSON shape: id, type, source, organization_id, timestamp, data."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Event:
        """Build an Event from the seed's JSON shape; ``BadRequest`` if it is not one."""
        if not isinstance(raw, Mapping):
            raise BadRequest("event JSON must be an object")
        missing = [k for k in ("type", "source", "organization_id") if k not in raw]
        if missing:
            raise BadRequest(
                f"event JSON is missing {', '.join(missing)}", details={"missing": missing}
            )
        kwargs: dict[str, Any] = {
            "type": raw["type"],
            "source": raw["source"],
            "organization_id": raw["organization_id"],
            "data": raw.get("data", {}),
        }
        if "id" in raw:
            kwargs["id"] = raw["id"]
        if "timestamp" in raw:
            kwargs["timestamp"] = parse_timestamp(raw["timestamp"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """Inverse of :meth:`to_json`; ``BadRequest`` for anything that is not one."""
        try:
            raw = json.loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise BadRequest("event JSON does not parse") from exc
        return cls.from_dict(raw)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and microseconds when present."""
    text = value.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def parse_timestamp(value: Any) -> datetime:
    """Parse RFC 3339 (``Z`` or an offset); ``BadRequest`` if naive or malformed."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError as exc:
            raise BadRequest(
                "event timestamp is not RFC 3339", details={"field": "timestamp"}
            ) from exc
    else:
        raise BadRequest("event timestamp is not RFC 3339", details={"field": "timestamp"})
    if parsed.tzinfo is None:
        raise BadRequest(
            "event timestamp must be timezone-aware (UTC)", details={"field": "timestamp"}
        )
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


@attrs.frozen
class PublishAck:
    """The broker's receipt: stored in ``stream`` at ``sequence``.

    ``duplicate`` is true when an event with the same id was already stored inside
    the duplicate window; the broker kept the first copy only.
    """

    stream: str
    sequence: int
    duplicate: bool = False


@attrs.frozen(kw_only=True)
class DeadLetter:
    """An event that will not be delivered again, kept for inspection or replay.

    ``event`` is ``None`` when the payload did not decode; ``payload`` and
    ``headers`` always hold what was on the wire. ``reason`` is ``rejected``,
    ``max_deliver`` or ``undecodable``; ``error`` describes the last failure.
    """

    subject: str
    durable: str
    reason: str
    attempts: int
    event: Event | None
    payload: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    error: str | None = None


Handler: TypeAlias = Callable[[Event], Awaitable[None]]
"""An event handler: return to ack, raise to nak (retry), raise :class:`Reject` to
dead-letter at once. Handlers must be idempotent by ``event.id``."""


class Reject(Exception):
    """Raised by a handler for an event that can never succeed (no redelivery)."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class Publisher(Protocol):
    """Publishes events to a durable broker.

    Contract:

    - ``publish`` returns only once the broker has stored the event (for NATS, the
      JetStream PubAck); the subject defaults to ``event.type``.
    - ``event.id`` is the dedupe key: publishing the same id again inside the
      duplicate window stores nothing new and returns ``duplicate=True``.
    - Transient failures are retried with backoff under the same id, so a retry
      never duplicates; when retries run out it raises ``ServiceUnavailable``.
    - The current ``request_id`` (:mod:`ports.context`) travels with the event.
    - ``publish_many`` publishes a batch with acks awaited together; results are in
      the order of ``events``. Safe to call from many tasks at once.
    """

    async def publish(self, event: Event, *, subject: str | None = None) -> PublishAck: ...

    async def publish_many(
        self, events: Sequence[Event], *, subject: str | None = None
    ) -> list[PublishAck]: ...


@runtime_checkable
class Subscription(Protocol):
    """A running subscription. ``stop`` is idempotent and safe to call concurrently."""

    @property
    def subject(self) -> str: ...

    @property
    def durable(self) -> str: ...

    @property
    def running(self) -> bool:
        """True while it delivers; false after :meth:`stop`, or when it cannot go on
        (health reports it)."""
        ...

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking new events; let in-flight handlers finish (and ack) for up to
        ``timeout`` seconds; undelivered events stay for the durable's next member."""
        ...


@runtime_checkable
class Subscriber(Protocol):
    """Delivers events to handlers, at least once.

    Contract:

    - ``subject`` may use wildcards: ``*`` one token, ``>`` one or more at the end.
    - ``durable`` names a consumer group: members share the work (each event to
      one member); different durables each see every event; a durable resumes
      where it stopped and a new durable starts from the first stored event.
    - Handler returns -> ack. Raises -> nak and redelivery after ``backoff[n]``
      seconds (the last value repeats), at most ``max_deliver`` handler runs, then
      a dead letter. Raises :class:`Reject` -> dead letter at once. A payload that
      does not decode -> dead letter at once, logged; the subscription goes on.
    - ``max_deliver`` counts handler runs: a delivery the handler never saw
      (prefetched and returned at stop, redelivered after a reconnect, held by a
      member that left) never uses up an attempt, and ``attempt`` in the handler's
      context is the handler-run number.
    - Any exception from a handler is a failed attempt (logged with the event id)
      and the subscription goes on: a ``CancelledError`` of its own, an exception
      whose ``str()`` raises, a ``BaseException`` subclass. Only the subscription's
      own cancellation (``stop``) is not a failure.
    - A handler still running after ``ack_wait`` seconds is kept alive (in
      progress), not redelivered under it. A handler still running after
      ``handler_timeout`` seconds (``None``: no limit) is cancelled: an ordinary
      failed attempt (backoff, redelivery).
    - Up to ``concurrency`` handlers run at once for this subscription; with
      ``concurrency=1`` a single subscriber sees events in publish order.
    - The handler's :mod:`ports.context` comes from the event alone (never from
      the task that called ``subscribe``): ``event_id``, ``event_type``,
      ``organization_id``, ``attempt`` (1-based) and the publisher's
      ``request_id`` (absent when the event carries none).
    """

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
        handler_timeout: float | None = None,
    ) -> Subscription: ...
