"""Dead letters on JetStream: the headers a dead letter carries, and reading them back."""

from __future__ import annotations

from typing import Final

from nats.aio.msg import Msg

from adapters import event_codec
from ports.events import DeadLetter, Event

__all__ = [
    "H_DEAD_SUBJECT",
    "H_DEAD_DURABLE",
    "H_DEAD_REASON",
    "H_DEAD_ATTEMPTS",
    "H_DEAD_ERROR",
    "H_DEAD_MSG_ID",
    "dead_letter_from",
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


def dead_letter_from(msg: Msg) -> DeadLetter:
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
