"""The dead-letter builder: every dead letter fits the server's max payload and is one
nats-py sends, whatever headers and body the original carried; and it reads back."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg

from adapters import event_codec
from adapters._event_rules import wire_size
from adapters.nats_events.dead_letters import (
    H_DEAD_ATTEMPTS,
    H_DEAD_DURABLE,
    H_DEAD_ERROR,
    H_DEAD_MSG_ID,
    H_DEAD_REASON,
    H_DEAD_SUBJECT,
    H_DEAD_TRUNCATED,
    HEADER_NAME,
    dead_letter_from,
    dead_letter_message,
)
from adapters.nats_events.wire import header_lines
from ports.events import Event

_HPUB = re.compile(rb"HPUB (\S+) (\S*) ?(\d+) (\d+)\r\n")


def _build(
    headers: Mapping[str, str],
    *,
    data: bytes = b"{}",
    error: str = "ValueError: boom",
    max_payload: int = 1024 * 1024,
    subject: str = "order.placed",
) -> tuple[str, bytes, dict[str, str]]:
    return dead_letter_message(
        subject=subject,
        durable="billing",
        data=data,
        headers=headers,
        reason="rejected",
        attempts=3,
        error=error,
        stream_sequence=42,
        dead_prefix="dead.events",
        max_payload=max_payload,
    )


async def _sent_by_nats_py(
    subject: str, body: bytes, headers: dict[str, str], max_payload: int
) -> tuple[int, bytes, bytes]:
    """What nats-py's ``publish`` writes for this message: (total size it announces,
    the header block, the body); raises what ``publish`` raises."""
    nc = Client()
    nc._max_payload = max_payload
    nc._max_pending_size = 1 << 30  # buffer while "not connected": nothing is sent
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    nc._send_command = capture  # type: ignore[method-assign]
    await nc.publish(subject, body, headers=headers)
    (cmd,) = sent
    match = _HPUB.match(cmd)
    assert match is not None, cmd[:200]
    header_len, total = int(match.group(3)), int(match.group(4))
    rest = cmd[match.end() :]
    return total, rest[:header_len], rest[header_len:total]


def _stored(subject: str, body: bytes, block: bytes) -> Msg:
    """A stored dead letter as ``dead_letter_from`` reads it."""
    headers = header_lines(block[len(b"NATS/1.0\r\n") :])
    msg = SimpleNamespace(
        subject=subject,
        data=body,
        headers=headers,
        metadata=SimpleNamespace(timestamp=datetime(2025, 1, 1, tzinfo=UTC)),
    )
    return cast(Msg, msg)


def test_control_headers_are_left_out_and_msg_id_is_kept() -> None:
    """JetStream control headers of the original never reach the dead letter."""
    subject, body, headers = _build(
        {
            "ce-id": "e1",
            "Nats-Msg-Id": "e1",
            "Nats-Expected-Last-Sequence": "7",
            "Nats-Expected-Stream": "OTHER",
            "Nats-Rollup": "sub",
            "Nats-TTL": "1s",
            "Nats-Marker-Reason": "MaxAge",
            "nats-anything": "x",
        }
    )
    assert subject == "dead.events.billing.order.placed"
    assert body == b"{}"
    assert [k for k in headers if k.lower().startswith("nats-")] == ["Nats-Msg-Id"]
    assert headers["Nats-Msg-Id"] == "billing:42"
    assert headers[H_DEAD_MSG_ID] == "e1"
    assert headers["ce-id"] == "e1"
    assert headers[H_DEAD_SUBJECT] == "order.placed"
    assert headers[H_DEAD_DURABLE] == "billing"
    assert headers[H_DEAD_REASON] == "rejected"
    assert headers[H_DEAD_ATTEMPTS] == "3"
    assert headers[H_DEAD_ERROR] == event_codec.header_value("ValueError: boom")


def test_names_nats_py_refuses_and_ours_are_left_out() -> None:
    """A header named with a space, a colon or non-ASCII, or like ours, is dropped."""
    _, _, headers = _build(
        {
            "bad name": "1",
            "bad:name": "2",
            "naïve": "3",
            "": "4",
            "Dead-Letter-Reason": "forged",
            "dead-letter-truncated": "forged",
            " padded ": "5",
        }
    )
    assert headers[H_DEAD_REASON] == "rejected"
    assert "padded" in headers
    assert all(HEADER_NAME.fullmatch(k) for k in headers)
    assert not {"bad name", "bad:name", "naïve", "", "dead-letter-truncated"} & set(headers)


def test_the_error_is_trimmed_before_any_original_header() -> None:
    """Just over the limit: the error text gives way, the original headers stay."""
    original = {"ce-id": "e1", "x-trace": "t" * 100}
    full = _build(original, error="E" * 400)
    limit = wire_size(full[1], full[2]) - 50
    _, body, headers = _build(original, error="E" * 400, max_payload=limit)
    assert wire_size(body, headers) <= limit
    assert headers["x-trace"] == "t" * 100
    assert headers[H_DEAD_ERROR].endswith("...")
    assert len(headers[H_DEAD_ERROR]) < 400


def test_original_headers_are_dropped_largest_first() -> None:
    """Past the error, the largest original header goes first."""
    original = {"small": "s", "big": "b" * 300, "medium": "m" * 100}
    full = _build(original, error="")
    limit = wire_size(full[1], full[2]) - 200
    _, body, headers = _build(original, error="", max_payload=limit)
    assert wire_size(body, headers) <= limit
    assert "big" not in headers
    assert headers["medium"] == "m" * 100
    assert headers["small"] == "s"


def test_a_body_that_cannot_fit_is_left_out_and_marked() -> None:
    """A body that fitted with its own headers but not with ours: empty body, marked,
    the original headers kept as far as they fit."""
    limit = 4096
    original = {"ce-id": "e1", "ce-type": "order.placed"}
    data = b"x" * (limit - 40)
    _, body, headers = _build(original, data=data, max_payload=limit)
    assert body == b""
    assert headers[H_DEAD_TRUNCATED] == "body"
    assert headers["ce-id"] == "e1"
    assert headers[H_DEAD_ERROR] == event_codec.header_value("ValueError: boom")
    assert wire_size(body, headers) <= limit


def test_a_tiny_max_payload_cuts_the_subject_header_last() -> None:
    """A server that cannot hold even the dead-letter headers with the subject: the
    subject header is cut, and reading back takes the subject from the wire subject."""
    subject = "order." + "s" * 400
    wire, body, headers = _build({"ce-id": "e1"}, subject=subject, max_payload=300)
    assert wire_size(body, headers) <= 300
    assert headers[H_DEAD_TRUNCATED] == "body,subject"
    letter = dead_letter_from(_stored(wire, body, _block(headers)), dead_prefix="dead.events")
    assert letter.subject == subject
    with pytest.raises(ValueError, match="too small"):
        _build({}, max_payload=100)


def _block(headers: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


async def test_an_event_reads_back_whole() -> None:
    """A dead letter with room to spare reads back as the event it carried."""
    event = Event(type="order.placed", source="shop", organization_id="org", data={"n": 1})
    data, original = event_codec.encode(event, request_id="req-1")
    wire, body, headers = _build(original, data=data, error="Reject: no stock for ü")
    total, block, sent = await _sent_by_nats_py(wire, body, headers, 1024 * 1024)
    assert total == wire_size(body, headers)
    letter = dead_letter_from(_stored(wire, sent, block))
    assert letter.event == event
    assert letter.headers[event_codec.H_MSG_ID] == event.id
    assert (letter.subject, letter.durable, letter.reason, letter.attempts) == (
        "order.placed",
        "billing",
        "rejected",
        3,
    )
    assert letter.error == "Reject: no stock for ü"


_CONTROL = st.sampled_from(
    [
        "Nats-Msg-Id",
        "Nats-Expected-Last-Sequence",
        "Nats-Expected-Last-Subject-Sequence",
        "Nats-Expected-Stream",
        "Nats-Expected-Last-Msg-Id",
        "Nats-Rollup",
        "Nats-TTL",
        "Nats-Marker-Reason",
        "NATS-MSG-ID",
        "Dead-Letter-Reason",
        "ce-id",
        "Content-Type",
    ]
)
_NAMES = st.one_of(
    _CONTROL, st.text(min_size=0, max_size=30), st.from_regex(HEADER_NAME, fullmatch=True)
)
_VALUES = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.integers(0, 3000).map(lambda n: "v" * n),
)


@st.composite
def _cases(draw: st.DrawFn) -> dict[str, Any]:
    max_payload = draw(st.integers(min_value=1024, max_value=64 * 1024))
    size = draw(st.integers(min_value=0, max_value=max_payload))
    data = bytes([draw(st.integers(0, 255))]) * size
    return {
        "headers": draw(st.dictionaries(_NAMES, _VALUES, max_size=12)),
        "data": data,
        "error": draw(st.one_of(st.text(max_size=600), st.just("x" * 2000))),
        "subject": draw(st.from_regex(r"[a-z]{1,20}(\.[a-zA-Z0-9_ü-]{1,20}){0,3}", fullmatch=True)),
        "max_payload": max_payload,
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases())
@example(
    case={
        "headers": {"bad name": "x", "Nats-Expected-Last-Sequence": "1", "ce-id": "e"},
        "data": b"y" * (1024 - 10),
        "error": "boom",
        "subject": "order.placed",
        "max_payload": 1024,
    }
)
async def test_every_dead_letter_fits_and_nats_py_sends_it(case: dict[str, Any]) -> None:
    """For any original, the dead letter fits max_payload, has only token header names
    and no control header but its own Nats-Msg-Id, and nats-py's publish sends it."""
    limit = case["max_payload"]
    wire, body, headers = _build(
        case["headers"],
        data=case["data"],
        error=case["error"],
        max_payload=limit,
        subject=case["subject"],
    )
    assert wire_size(body, headers) <= limit
    assert all(HEADER_NAME.fullmatch(name) for name in headers)
    assert [n for n in headers if n.lower().startswith("nats-")] == ["Nats-Msg-Id"]
    assert body in (case["data"], b"")
    assert (body == b"") == (H_DEAD_TRUNCATED in headers) or case["data"] == b""
    total, block, sent = await _sent_by_nats_py(wire, body, headers, limit)
    assert total == wire_size(body, headers)
    letter = dead_letter_from(_stored(wire, sent, block), dead_prefix="dead.events")
    assert letter.subject == case["subject"]
    assert (letter.durable, letter.reason, letter.attempts) == ("billing", "rejected", 3)
    assert case["error"].startswith((letter.error or "").removesuffix("..."))
