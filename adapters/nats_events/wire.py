"""The JetStream wire as a subscription reads it: header blocks, statuses, deliveries."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

__all__ = [
    "Delivery",
    "header_lines",
    "status_of",
    "is_ack_subject",
    "attempt_of",
    "reply_info",
]

_SPACE: Final = re.compile(r"\s")
_VERSION_LINE: Final = b"NATS/1.0"


def header_lines(lines: bytes, *, lower: bool = False) -> dict[str, str]:
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


def status_of(raw: bytes | None) -> tuple[str, str, dict[str, str]]:
    """Status code, description and headers of a status message
    (``NATS/1.0 408 Request Timeout\\r\\nNats-Pending-Messages: 3\\r\\n\\r\\n``)."""
    if not raw:
        return "", "", {}
    line, _, rest = raw.partition(b"\r\n")
    status = line[len(_VERSION_LINE) :].decode("utf-8", "replace").strip()
    code, _, description = status.partition(" ")
    return code, description.strip(), header_lines(rest)


_NAK: Final = Msg.Ack.Nak
_TERM: Final = Msg.Ack.Term
_PROGRESS: Final = Msg.Ack.Progress


class Delivery:
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
        return header_lines(raw[len(_VERSION_LINE) + 2 :], lower=lower) if raw else {}

    @property
    def stream_sequence(self) -> int:
        """The message's sequence in the stream (from the ack subject)."""
        tokens = self.reply.split(".")
        return int(tokens[5 if len(tokens) == 9 else 7])

    def rebind(self, nc: NatsClient) -> None:
        """Send this delivery's acknowledgements through ``nc`` (a replacement client)."""
        self._nc = nc

    async def ack(self) -> None:
        await self._nc.publish(self.reply, b"")

    async def nak(self, delay: float | None = None) -> None:
        payload = _NAK if not delay else _NAK + b' {"delay":%d}' % int(delay * 1e9)
        await self._nc.publish(self.reply, payload)

    async def term(self) -> None:
        await self._nc.publish(self.reply, _TERM)

    async def in_progress(self) -> None:
        await self._nc.publish(self.reply, _PROGRESS)


def is_ack_subject(reply: bytes) -> bool:
    """Whether ``reply`` is a JetStream delivery's ack subject (anything else on a pull
    inbox is a foreign message: ignored, never handled)."""
    if not reply.startswith(b"$JS.ACK."):
        return False
    tokens = reply.split(b".")
    if len(tokens) == 9:
        numbers = tokens[4:9]
    elif len(tokens) >= 11:
        numbers = tokens[6:10]
    else:
        return False
    return all(token.isdigit() for token in numbers)


def attempt_of(reply: str) -> int:
    """The delivery count from a JetStream ack subject (see :func:`reply_info`)."""
    tokens = reply.split(".")
    return int(tokens[4 if len(tokens) == 9 else 6])


def reply_info(reply: str) -> tuple[int, datetime]:
    """The delivery count and storage time from a JetStream ack subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or the
    v2 form with ``<domain>.<account hash>`` after ``ACK`` (and a token at the end)."""
    tokens = reply.split(".")
    offset = 0 if len(tokens) == 9 else 2
    return int(tokens[4 + offset]), datetime.fromtimestamp(int(tokens[7 + offset]) / 1e9, UTC)
