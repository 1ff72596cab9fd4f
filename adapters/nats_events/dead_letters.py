"""Dead letters on JetStream: the message a dead letter is stored as, and reading it back.

:func:`dead_letter_message` builds a dead letter that the server always stores (pure:
no I/O). The original payload and headers travel with ``Dead-Letter-*`` headers, except:

- the original's JetStream control headers (``Nats-Msg-Id``, ``Nats-Expected-*``,
  ``Nats-Rollup``, ``Nats-TTL``, ``Nats-Marker-Reason``, any other ``Nats-*``) are left
  out, the server would act on them; ``Nats-Msg-Id`` is kept as ``Dead-Letter-Msg-Id``;
- header names nats-py refuses to send (not an RFC 7230 token) are left out, and
  headers of the original named like ours (``Dead-Letter-*``) too;
- ``Nats-Msg-Id: <durable>:<stream sequence>`` dedupes the dead letter itself;
- when the message would exceed the server's ``max_payload`` (headers and body counted
  as the server counts them), the error text is trimmed first, then the original's
  other headers are dropped, largest first; if the body alone still does not fit, it
  is replaced by an empty body and ``Dead-Letter-Truncated: body`` says so (the
  original headers then come back as far as they fit). On a server whose
  ``max_payload`` cannot even hold the dead-letter headers (under about 200 bytes),
  the subject header is cut too (``Dead-Letter-Truncated: body,subject``).

:func:`dead_letter_from` reads a stored dead letter back into a :class:`DeadLetter`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote

from nats.aio.msg import Msg

from adapters import event_codec
from adapters._event_rules import wire_size
from ports.events import DeadLetter, Event

__all__ = [
    "H_DEAD_SUBJECT",
    "H_DEAD_DURABLE",
    "H_DEAD_REASON",
    "H_DEAD_ATTEMPTS",
    "H_DEAD_ERROR",
    "H_DEAD_MSG_ID",
    "H_DEAD_CONSUMER",
    "H_DEAD_TRUNCATED",
    "HEADER_NAME",
    "dead_letter_message",
    "dead_letter_from",
]

H_DEAD_SUBJECT: Final = "Dead-Letter-Subject"
H_DEAD_DURABLE: Final = "Dead-Letter-Durable"
H_DEAD_REASON: Final = "Dead-Letter-Reason"
H_DEAD_ATTEMPTS: Final = "Dead-Letter-Attempts"
H_DEAD_ERROR: Final = "Dead-Letter-Error"
H_DEAD_MSG_ID: Final = "Dead-Letter-Msg-Id"
H_DEAD_CONSUMER: Final = "Dead-Letter-Consumer"
"""The consumer on the server (``<SERVICE_NAME>-<durable>``): tells apart two services
that both name a group the same on one stream."""
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
H_DEAD_TRUNCATED: Final = "Dead-Letter-Truncated"
"""Set on a dead letter whose body (``body``), or body and subject header
(``body,subject``), did not fit the server's max payload and was left out."""

HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name nats-py sends: an RFC 7230 token (a copy of nats-py's private
``_HEADER_KEY_RE``; nats-py raises ``BadHeaderError`` for any other name)."""

_OURS: Final = _DEAD_HEADERS | {H_DEAD_TRUNCATED.lower(), H_DEAD_CONSUMER.lower()}
_CONTROL: Final = "nats-"
_NATS_MSG_ID: Final = event_codec.H_MSG_ID.lower()
_NEWLINES: Final = str.maketrans({"\r": " ", "\n": " "})
_ELLIPSIS: Final = "..."
_LINE: Final = len(b": \r\n")


def _clean_value(value: str) -> str:
    """``value`` as nats-py writes it (stripped, newlines as spaces), with what UTF-8
    cannot encode (lone surrogates) as ``?``, so that sending it never raises."""
    text = value.strip().translate(_NEWLINES)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _line(name: str, value: str) -> int:
    return len(name) + len(value.encode()) + _LINE


def _cut(text: str, room: int) -> str:
    """``text`` percent-encoded for a header in at most ``room`` bytes: whole, or its
    longest prefix that fits followed by ``...`` (never half a character)."""
    value = event_codec.header_value(text)
    if len(value) <= room:
        return value
    room -= len(_ELLIPSIS)
    low, high = 0, len(text)  # the longest prefix text[:low] whose value fits
    while low < high:
        middle = (low + high + 1) // 2
        if len(event_codec.header_value(text[:middle])) <= room:
            low = middle
        else:
            high = middle - 1
    return event_codec.header_value(text[:low]) + _ELLIPSIS if room >= 0 else ""


def _text(value: str) -> str:
    """A header value percent-decoded; a broken escape is read with replacement."""
    try:
        return event_codec.header_text(value)
    except UnicodeDecodeError:
        return unquote(value, errors="replace")


def _fit(
    body: bytes, kept: dict[str, str], fixed: dict[str, str], error: str, limit: int
) -> dict[str, str] | None:
    """The headers of a dead letter with ``body`` that fit ``limit``: the original's
    headers (``kept``) dropped largest first until the rest fits with an empty error,
    then ``error`` (raw text) cut to the room left; ``None`` when even no ``kept``
    header fits."""
    sizes = {name: _line(name, value) for name, value in kept.items()}
    total = wire_size(body, fixed) + _line(H_DEAD_ERROR, "") + sum(sizes.values())
    dropped: set[str] = set()
    for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= limit:
            break
        dropped.add(name)
        total -= sizes[name]
    if total > limit:
        return None
    out = {name: value for name, value in kept.items() if name not in dropped}
    out.update(fixed)
    out[H_DEAD_ERROR] = _cut(error, limit - total)
    return out


def dead_letter_message(
    *,
    subject: str,
    durable: str,
    consumer: str = "",
    data: bytes,
    headers: Mapping[str, str],
    reason: str,
    attempts: int,
    error: str,
    stream_sequence: int,
    dead_prefix: str,
    max_payload: int,
) -> tuple[str, bytes, dict[str, str]]:
    """The dead letter of the message ``data`` / ``headers`` (names as sent) that
    durable ``durable`` gave up on, as ``(wire subject, body, headers)``: published
    to ``<dead_prefix>.<durable>.<subject>`` (``subject`` is relative), it is always
    stored (see the module docstring). ``ValueError`` only when ``max_payload`` is
    too small for the dead-letter headers themselves (a few hundred bytes)."""
    kept: dict[str, str] = {}
    original_id: str | None = None
    for name, value in headers.items():
        key = name.strip()
        lowered = key.lower()
        if lowered == _NATS_MSG_ID:
            original_id = _clean_value(value)
        elif (
            key
            and not lowered.startswith(_CONTROL)
            and lowered not in _OURS
            and HEADER_NAME.fullmatch(key) is not None
        ):
            kept[key] = _clean_value(value)
    if original_id is not None:
        kept[H_DEAD_MSG_ID] = original_id
    fixed = {
        H_DEAD_SUBJECT: event_codec.header_value(subject),
        H_DEAD_DURABLE: event_codec.header_value(durable),
        H_DEAD_REASON: event_codec.header_value(reason),
        H_DEAD_ATTEMPTS: str(attempts),
        # Dedupe the dead letter itself: once per (consumer, stream sequence), so two
        # services whose groups share a name never swallow each other's dead letters.
        event_codec.H_MSG_ID: event_codec.header_value(f"{consumer or durable}:{stream_sequence}"),
    }
    if consumer:
        fixed[H_DEAD_CONSUMER] = event_codec.header_value(consumer)
    wire = f"{dead_prefix}.{durable}.{subject}"
    out = _fit(data, kept, fixed, error, max_payload)
    if out is not None:
        return wire, data, out
    fixed[H_DEAD_TRUNCATED] = "body"
    out = _fit(b"", kept, fixed, error, max_payload)
    if out is not None:
        return wire, b"", out
    fixed[H_DEAD_TRUNCATED] = "body,subject"
    fixed[H_DEAD_SUBJECT] = ""
    room = max_payload - wire_size(b"", fixed) - _line(H_DEAD_ERROR, "")
    if room < 0:
        raise ValueError(f"max_payload {max_payload} is too small for a dead letter's own headers")
    fixed[H_DEAD_SUBJECT] = _cut(subject, room)
    out = _fit(b"", {}, fixed, error, max_payload)
    assert out is not None
    return wire, b"", out


def dead_letter_from(msg: Msg, *, dead_prefix: str | None = None) -> DeadLetter:
    """A stored dead letter read back: the original's ``Nats-Msg-Id`` restored from
    ``Dead-Letter-Msg-Id``, subject, error and reason percent-decoded, the event
    decoded when the payload allows (``None`` otherwise, e.g. a truncated body). The
    subject comes from the message's own subject when its header was cut (exact when
    ``dead_prefix`` is given). ``Dead-Letter-Truncated`` stays in ``headers``."""
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
    durable = _text(lowered.get(H_DEAD_DURABLE.lower(), ""))
    subject = _text(lowered.get(H_DEAD_SUBJECT.lower(), ""))
    if "subject" in lowered.get(H_DEAD_TRUNCATED.lower(), "") or not subject:
        subject = _subject_of(msg.subject, durable, dead_prefix) or subject
    return DeadLetter(
        subject=subject,
        durable=durable,
        reason=_text(lowered.get(H_DEAD_REASON.lower(), "")),
        attempts=int(attempts) if attempts.isascii() and attempts.isdigit() else 0,
        event=event,
        payload=bytes(msg.data),
        headers=headers,
        error=_text(error) if error is not None else None,
    )


def _subject_of(wire: str, durable: str, dead_prefix: str | None) -> str:
    """The relative subject of a dead letter's wire subject ``<prefix>.<durable>.<s>``."""
    if not durable:
        return ""
    if dead_prefix is not None:
        head = f"{dead_prefix}.{durable}."
        return wire[len(head) :] if wire.startswith(head) else ""
    _, sep, rest = wire.partition(f".{durable}.")
    return rest if sep else ""
