"""Event <-> wire message: CloudEvents 1.0 in binary content mode, JSON data.

The wire format every event adapter speaks (see ADR 0018):

- the body is the JSON of ``event.data`` (orjson; always a JSON object);
- the attributes travel in headers, named as the CloudEvents HTTP binding names
  them, so that any CloudEvents reader that knows the ``ce-`` mapping reads our
  events and we read theirs::

      ce-specversion: 1.0
      ce-id: <event.id>
      ce-type: <event.type>
      ce-source: <event.source>
      ce-time: <event.timestamp, RFC 3339, UTC, "Z">
      ce-organizationid: <event.organization_id>     (CloudEvents extension)
      ce-requestid: <the publisher's request id>     (extension; only when bound)
      ce-traceparent, ce-tracestate: W3C trace context (distributed-tracing
                                                     extension; only when traced, ADR 0031)
      Content-Type: application/json
      Nats-Msg-Id: <event.id>                        (JetStream dedupe key)

- header values are percent-encoded exactly where the CloudEvents HTTP binding
  says so (space, ``"``, ``%`` and anything outside printable ASCII); plain ids,
  types and timestamps therefore travel unchanged.

Decoding is total: :func:`decode` returns an :class:`~ports.events.Event` or
raises :class:`EventDecodeError` (a ``BadRequest`` with code ``DECODE_ERROR``),
never anything else, whatever the bytes and headers. It reads header names in
any case, accepts ``X-Request-ID`` when ``ce-requestid`` is absent, and also
reads structured-mode messages (``Content-Type: application/cloudevents+json``).
A message without ``ce-time`` gets ``default_time`` (the broker's storage time);
``ce-organizationid`` is required, as every event of ours belongs to a tenant.

:func:`event_to_json` / :func:`event_from_json` are the fast (cattrs + orjson)
equivalents of :meth:`Event.to_json` / :meth:`Event.from_json`: same JSON shape,
same validation, bytes instead of text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, unquote

import attrs
import cattrs
import orjson

from adapters._trace_carrier import Carrier, carrier_from_headers
from domain_errors import BadRequest, ErrorCode
from ports.events import Event, format_timestamp, parse_timestamp

__all__ = [
    "EventDecodeError",
    "Decoded",
    "encode",
    "decode",
    "decode_message",
    "encode_data",
    "header_value",
    "header_text",
    "request_id_from_headers",
    "event_to_json",
    "event_from_json",
    "trusted_event",
    "SPECVERSION",
    "CONTENT_TYPE",
    "H_SPECVERSION",
    "H_ID",
    "H_TYPE",
    "H_SOURCE",
    "H_TIME",
    "H_ORGANIZATION_ID",
    "H_REQUEST_ID",
    "H_CONTENT_TYPE",
    "H_MSG_ID",
    "H_X_REQUEST_ID",
    "H_TRACEPARENT",
    "H_TRACESTATE",
]

SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"

H_SPECVERSION: Final = "ce-specversion"
H_ID: Final = "ce-id"
H_TYPE: Final = "ce-type"
H_SOURCE: Final = "ce-source"
H_TIME: Final = "ce-time"
H_ORGANIZATION_ID: Final = "ce-organizationid"
H_REQUEST_ID: Final = "ce-requestid"
H_CONTENT_TYPE: Final = "Content-Type"
H_MSG_ID: Final = "Nats-Msg-Id"
H_X_REQUEST_ID: Final = "X-Request-ID"
H_TRACEPARENT: Final = "ce-traceparent"
H_TRACESTATE: Final = "ce-tracestate"

_STRUCTURED_TYPE: Final = "application/cloudevents+json"
_X_REQUEST_ID_LOWER: Final = H_X_REQUEST_ID.lower()
# CloudEvents HTTP binding 3.1.3.2: printable ASCII stays, except space, '"' and '%'.
_SAFE: Final = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
_NEEDS_QUOTING: Final = re.compile(r'[^\x21-\x7e]|["%]')
# orjson reads integers beyond 64 bits as floats, silently: let stdlib json read those.
_LONG_DIGITS: Final = re.compile(rb"\d{20}")
_JSON_TYPE: Final = re.compile(r"^\s*(application|text)/([\w.+-]*\+)?json\s*(;.*)?$", re.I)


class EventDecodeError(BadRequest):
    """A message that is not an event we can read: names what is wrong, never values."""

    default_code = ErrorCode.DECODE_ERROR


@attrs.frozen(slots=True)
class Decoded:
    """A decoded message: the event, the publisher's request id and its trace
    context (``ce-traceparent`` / ``ce-tracestate``, or bare ``traceparent``), if any."""

    event: Event
    request_id: str | None = None
    trace: Carrier | None = None


def header_value(value: str) -> str:
    """``value`` percent-encoded for a header, per the CloudEvents HTTP binding."""
    if _NEEDS_QUOTING.search(value) is None:
        return value
    return quote(value, safe=_SAFE, errors="surrogatepass")


def header_text(value: str) -> str:
    """Inverse of :func:`header_value`: a header value percent-decoded."""
    return unquote(value, errors="surrogatepass") if "%" in value else value


_unquote = header_text


def encode_data(data: Mapping[str, Any]) -> bytes:
    """The JSON body for ``data``: orjson, or stdlib json for what orjson refuses
    (integers beyond 64 bits, lone surrogates), so that every valid Event encodes."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def encode(
    event: Event, *, request_id: str | None = None, trace: Carrier | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers that carry ``event`` (and ``request_id``, and the trace
    context ``trace``) on the wire."""
    msg_id = header_value(event.id)
    headers = {
        H_SPECVERSION: SPECVERSION,
        H_ID: msg_id,
        H_TYPE: header_value(event.type),
        H_SOURCE: header_value(event.source),
        H_TIME: format_timestamp(event.timestamp),
        H_ORGANIZATION_ID: header_value(event.organization_id),
        H_CONTENT_TYPE: CONTENT_TYPE,
        H_MSG_ID: msg_id,
    }
    if request_id is not None:
        headers[H_REQUEST_ID] = header_value(str(request_id))
    if trace is not None:
        headers[H_TRACEPARENT] = header_value(trace[0])
        if trace[1]:
            headers[H_TRACESTATE] = header_value(trace[1])
    return encode_data(event.data), headers


def _loads(body: bytes) -> Any:
    if _LONG_DIGITS.search(body) is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # stdlib json reads a few things orjson does not (escaped lone surrogates)
    return json.loads(body)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): v for k, v in headers.items()}


def request_id_from_headers(headers: Mapping[str, str] | None) -> str | None:
    """The publisher's request id carried by ``headers``, or ``None``."""
    if not headers:
        return None
    lowered = _lower(headers)
    raw = lowered.get(H_REQUEST_ID) or lowered.get(_X_REQUEST_ID_LOWER)
    return _unquote(raw) if raw else None


def _required(lowered: Mapping[str, str], name: str) -> str:
    raw = lowered.get(name)
    if raw is None:
        raise EventDecodeError(f"message has no {name} header", details={"header": name})
    return _unquote(raw)


def _check_json_type(content_type: str | None) -> None:
    if content_type is not None and _JSON_TYPE.match(content_type) is None:
        raise EventDecodeError(
            "message data is not JSON (unsupported content type)",
            details={"header": "content-type"},
        )


def _binary(body: bytes, lowered: Mapping[str, str], default_time: datetime | None) -> Decoded:
    specversion = lowered[H_SPECVERSION]
    if specversion != SPECVERSION and specversion.strip() != SPECVERSION:
        raise EventDecodeError(
            "unsupported CloudEvents specversion", details={"header": H_SPECVERSION}
        )
    content_type = lowered.get("content-type")
    if content_type != CONTENT_TYPE:
        _check_json_type(content_type)
    data = _fast_loads(body)
    fast = data is not None
    if data is None:
        data = _loads(body) if body.strip() else {}
    raw_time = lowered.get(H_TIME)
    timestamp = parse_timestamp(_unquote(raw_time)) if raw_time is not None else default_time
    if timestamp is None:
        raise EventDecodeError("message has no ce-time header", details={"header": H_TIME})
    type_ = _required(lowered, H_TYPE)
    source = _required(lowered, H_SOURCE)
    organization_id = _required(lowered, H_ORGANIZATION_ID)
    id_ = _required(lowered, H_ID)
    raw_rid = lowered.get(H_REQUEST_ID) or lowered.get(_X_REQUEST_ID_LOWER)
    event = (
        _trusted_event(type_, source, organization_id, id_, data=data, timestamp=timestamp)
        if fast
        else None
    )
    if event is None:
        event = Event(
            type=type_,
            source=source,
            organization_id=organization_id,
            data=data,
            id=id_,
            timestamp=timestamp,
        )
    return Decoded(event, _unquote(raw_rid) if raw_rid else None, carrier_from_headers(lowered))


# Decoding builds an Event for every message consumed; Event's own checks (a walk of
# ``data`` and a deep copy of it) cost about as much as the rest of decoding. When
# the body came from orjson (JSON shapes only, finite floats, fresh objects) and is
# at most 64 containers deep, those checks cannot fail and the copy is redundant, so
# the Event is assembled directly. Anything else takes the checked constructor. The
# shortcut switches itself off if Event's fields ever change.
_EVENT_FIELDS: Final = ("type", "source", "organization_id", "data", "id", "timestamp")
_TRUSTED: Final = tuple(f.name for f in attrs.fields(Event)) == _EVENT_FIELDS
_MAX_CONTAINERS: Final = 64
_set = object.__setattr__


def _fast_loads(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed by orjson when the result needs no further checking, else None."""
    if not _TRUSTED or not body or _LONG_DIGITS.search(body) is not None:
        return None
    # Every container takes two bytes at least: short bodies need no count.
    if len(body) > 2 * _MAX_CONTAINERS and body.count(b"{") + body.count(b"[") > _MAX_CONTAINERS:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if type(data) is dict else None


def trusted_event(
    type_: str,
    source: str,
    organization_id: str,
    id_: str,
    *,
    data: dict[str, Any],
    timestamp: datetime,
) -> Event:
    """An Event from fields that were checked when it was first built (an outbox row,
    a stored copy): ``data`` must be JSON-shaped (decoded JSON of a valid event). Falls
    back to the checked constructor when a field needs it."""
    event = _trusted_event(
        type_, source, organization_id, id_, data=data, timestamp=timestamp.astimezone(UTC)
    )
    if event is not None:
        return event
    return Event(
        type=type_,
        source=source,
        organization_id=organization_id,
        id=id_,
        data=data,
        timestamp=timestamp,
    )


def _trusted_event(
    type_: str,
    source: str,
    organization_id: str,
    id_: str,
    *,
    data: dict[str, Any],
    timestamp: datetime,
) -> Event | None:
    """An Event assembled without re-checking ``data`` (see above), or None when a
    field needs the checked constructor (blank text, a non-UTC timestamp)."""
    if (
        timestamp.tzinfo is not UTC
        or not type_.strip()
        or not source.strip()
        or not organization_id.strip()
        or not id_.strip()
    ):
        return None
    event = object.__new__(Event)
    _set(event, "type", type_)
    _set(event, "source", source)
    _set(event, "organization_id", organization_id)
    _set(event, "data", data)
    _set(event, "id", id_)
    _set(event, "timestamp", timestamp)
    return event


def _structured(body: bytes, default_time: datetime | None) -> Decoded:
    raw = _loads(body)
    if not isinstance(raw, dict):
        raise EventDecodeError("structured CloudEvent is not a JSON object")
    if raw.get("specversion") != SPECVERSION:
        raise EventDecodeError(
            "unsupported CloudEvents specversion", details={"field": "specversion"}
        )
    missing = [k for k in ("id", "type", "source", "organizationid") if k not in raw]
    if missing:
        raise EventDecodeError(
            f"structured CloudEvent is missing {', '.join(missing)}", details={"missing": missing}
        )
    if "data_base64" in raw:
        raise EventDecodeError("binary (data_base64) event data is not supported")
    content_type = raw.get("datacontenttype")
    _check_json_type(content_type if isinstance(content_type, str) else None)
    timestamp = parse_timestamp(raw["time"]) if "time" in raw else default_time
    if timestamp is None:
        raise EventDecodeError("structured CloudEvent has no time", details={"field": "time"})
    data = raw.get("data")
    event = Event(
        id=raw["id"],
        type=raw["type"],
        source=raw["source"],
        organization_id=raw["organizationid"],
        timestamp=timestamp,
        data={} if data is None else data,
    )
    rid = raw.get("requestid")
    parent, state = raw.get("traceparent"), raw.get("tracestate")
    trace: Carrier | None = None
    if isinstance(parent, str) and parent:
        trace = (parent, state if isinstance(state, str) and state else None)
    return Decoded(event, rid if isinstance(rid, str) and rid else None, trace)


def _decode(
    body: bytes,
    headers: Mapping[str, str] | None,
    default_time: datetime | None,
    lowered_names: bool,
) -> Decoded:
    if not headers:
        lowered: Mapping[str, str] = {}
    else:
        lowered = headers if lowered_names else _lower(headers)
    if H_SPECVERSION in lowered:
        return _binary(bytes(body), lowered, default_time)
    content_type = lowered.get("content-type", "")
    if content_type.strip().lower().startswith(_STRUCTURED_TYPE):
        return _structured(bytes(body), default_time)
    raise EventDecodeError(
        "message is not a CloudEvent (no ce-specversion header)",
        details={"header": H_SPECVERSION},
    )


def decode_message(
    body: bytes,
    headers: Mapping[str, str] | None,
    *,
    default_time: datetime | None = None,
    lowered: bool = False,
) -> Decoded:
    """Read a wire message into a :class:`Decoded`; :class:`EventDecodeError` otherwise.

    ``default_time`` stands in for a missing ``ce-time`` (for example the broker's
    storage time); without one, a missing time is a decode error. ``lowered`` says
    that the header names are already in lower case (saves a copy of the headers).
    """
    try:
        return _decode(body, headers, default_time, lowered)
    except EventDecodeError:
        raise
    except BadRequest as exc:
        raise EventDecodeError(f"message is not a valid event: {exc.message}") from exc
    except Exception as exc:
        raise EventDecodeError(
            f"message does not decode ({type(exc).__name__})", details={"cause": type(exc).__name__}
        ) from exc


def decode(
    body: bytes, headers: Mapping[str, str] | None, *, default_time: datetime | None = None
) -> Event:
    """The event carried by a wire message; :class:`EventDecodeError` otherwise."""
    return decode_message(body, headers, default_time=default_time).event


# --- the seed's JSON shape, fast: cattrs for structure, orjson for bytes -----------------


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise BadRequest("event JSON field must be a string")
    return value


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=False)
    converter.register_unstructure_hook(datetime, format_timestamp)
    converter.register_structure_hook(datetime, lambda value, _: parse_timestamp(value))
    converter.register_structure_hook(str, _strict_str)
    # ``data`` is checked and copied by Event itself: hand it over as it is.
    converter.register_structure_hook_func(
        lambda cls: cls == Mapping[str, Any], lambda value, _: value
    )
    return converter


_converter: Final = _make_converter()


def event_to_json(event: Event) -> bytes:
    """The seed's JSON shape (as :meth:`Event.to_json`), as UTF-8 bytes."""
    return encode_data(_converter.unstructure(event))


def _event_from_json(raw: bytes | str) -> Event:
    value = _loads(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if not isinstance(value, dict):
        raise EventDecodeError("event JSON must be an object")
    missing = [k for k in ("type", "source", "organization_id") if k not in value]
    if missing:
        raise EventDecodeError(
            f"event JSON is missing {', '.join(missing)}", details={"missing": missing}
        )
    return _converter.structure(value, Event)


def event_from_json(raw: bytes | str) -> Event:
    """Inverse of :func:`event_to_json`; :class:`EventDecodeError` for anything else."""
    try:
        return _event_from_json(raw)
    except EventDecodeError:
        raise
    except BadRequest as exc:
        raise EventDecodeError(f"event JSON is not a valid event: {exc.message}") from exc
    except Exception as exc:
        raise EventDecodeError(
            f"event JSON does not decode ({type(exc).__name__})",
            details={"cause": type(exc).__name__},
        ) from exc
