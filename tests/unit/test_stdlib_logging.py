"""Stdlib ``logging`` records in our JSON lines; repeated warnings rate-limited;
event lines carrying the event's request id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from adapters import event_codec
from adapters._log_fields import ACCESS_LOGGED, RepeatLimiter
from adapters.memory import InMemoryConfig
from adapters.structlog_logger import (
    StructlogLogger,
    capture_stdlib_logging,
    configure_logging,
)
from ports.context import bind_context
from ports.events import Event, Reject
from tests.unit.test_nats_internals import (
    EVENT,
    _connection,
    _logger,
    _storing,
    _subscription,
    delivery,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    servers = {
        name: (logging.getLogger(name).propagate, list(logging.getLogger(name).handlers))
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (propagate, server_handlers) in servers.items():
        logging.getLogger(name).propagate = propagate
        logging.getLogger(name).handlers[:] = server_handlers


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _captured(level: str = "info", repeat_interval: float = 10.0) -> io.StringIO:
    stream = io.StringIO()
    capture_stdlib_logging(
        StructlogLogger(service="svc", level=level, stream=stream), repeat_interval=repeat_interval
    )
    return stream


class TestRepeatLimiter:
    def test_first_then_one_per_interval_with_the_count_withheld(self) -> None:
        clock = FakeTime()
        limiter = RepeatLimiter(10.0, clock=clock)
        assert limiter.admit("a") == 0
        assert [limiter.admit("a") for _ in range(4)] == [None] * 4
        assert limiter.admit("b") == 0  # another line is not held back
        clock.now += 10
        assert limiter.admit("a") == 4
        assert limiter.admit("a") is None
        clock.now += 10
        assert limiter.admit("a") == 1

    def test_remembers_a_bounded_number_of_keys(self) -> None:
        limiter = RepeatLimiter(10.0, max_keys=2, clock=FakeTime())
        # "c" finds the table full: it starts afresh, so "a" is new again.
        assert [limiter.admit(k) for k in ("a", "b", "c", "a", "c")] == [0, 0, 0, 0, None]


@pytest.mark.usefixtures("restore_root")
class TestStdlibCapture:
    def test_records_come_out_as_our_json_lines(self) -> None:
        stream = _captured()
        with bind_context(request_id="req-1"):
            logging.getLogger("thirdparty.pool").info(
                "connecting to %s", "postgresql://app:hunter2@db/app", extra={"attempt": 2}
            )
        (line,) = _lines(stream)
        assert line["level"] == "info"
        assert line["logger"] == "thirdparty.pool"
        assert line["service"] == "svc"
        assert line["request_id"] == "req-1"
        assert line["attempt"] == 2
        assert "hunter2" not in line["message"]
        assert "[REDACTED]" in line["message"]

    def test_level_filter_and_exceptions(self) -> None:
        stream = _captured(level="warning")
        log = logging.getLogger("nats.aio.client")
        log.info("not written")
        try:
            raise ConnectionRefusedError("password=hunter2")
        except ConnectionRefusedError:
            log.exception("nats: encountered error")
        logging.getLogger("asyncio").critical("loop broke")
        first, second = _lines(stream)
        assert first["level"] == "error"
        assert first["error"]["type"] == "ConnectionRefusedError"
        assert "hunter2" not in json.dumps(first)
        assert second["level"] == "error"  # CRITICAL never means fatal/SystemExit

    def test_identical_warnings_are_rate_limited_with_a_count(self) -> None:
        stream = _captured(repeat_interval=0.0)
        limited = _captured(repeat_interval=3600.0)
        log = logging.getLogger("nats.aio.client")
        for _ in range(5):
            log.warning("reconnecting to %s", "nats://127.0.0.1:4222")
        log.warning("another warning")
        assert stream.getvalue() == ""  # replaced by the second capture
        lines = _lines(limited)
        assert [line["message"] for line in lines] == [
            "reconnecting to nats://127.0.0.1:4222",
            "another warning",
        ]
        assert "repeated" not in lines[0]

    def test_the_withheld_count_comes_with_the_next_line(self) -> None:
        stream = io.StringIO()
        bridge = capture_stdlib_logging(StructlogLogger(service="svc", stream=stream))
        clock = FakeTime()
        bridge._repeats = RepeatLimiter(10.0, clock=clock)  # type: ignore[attr-defined]
        log = logging.getLogger("nats.aio.client")
        for _ in range(4):
            log.warning("reconnect failed")
        clock.now += 10
        log.warning("reconnect failed")
        lines = _lines(stream)
        assert len(lines) == 2
        assert lines[1]["repeated"] == 3

    def test_one_access_line_per_request(self) -> None:
        stream = _captured()
        access = logging.getLogger("uvicorn.access")
        args = ("127.0.0.1:5000", "GET", "/orders?token=abc", "1.1", 200)
        access.info('%s - "%s %s HTTP/%s" %d', *args)
        marker = ACCESS_LOGGED.set(True)
        try:
            access.info('%s - "%s %s HTTP/%s" %d', *args)  # ours is written instead
        finally:
            ACCESS_LOGGED.reset(marker)
        (line,) = _lines(stream)
        assert line["logger"] == "uvicorn.access"
        assert line["method"] == "GET"
        assert line["status"] == 200
        assert "abc" not in json.dumps(line)

    def test_uvicorn_handlers_give_way_and_a_second_capture_replaces_the_first(self) -> None:
        server = logging.getLogger("uvicorn.error")
        server.addHandler(logging.StreamHandler(io.StringIO()))
        server.propagate = False
        _captured()
        second = _captured()
        assert server.handlers == []
        assert server.propagate is True
        server.info("Uvicorn running")
        assert _lines(second)[0]["message"] == "Uvicorn running"
        bridges = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StdlibBridge"]
        assert len(bridges) == 1

    def test_configure_logging_captures_unless_told_not_to(self) -> None:
        config = InMemoryConfig({"SERVICE_NAME": "svc"})
        stream = io.StringIO()
        configure_logging(config, stream=stream)
        left_alone = io.StringIO()
        configure_logging(config, stream=left_alone, capture_stdlib=False)
        logging.getLogger("psycopg").warning("slow query")
        assert _lines(stream)[0]["message"] == "slow query"
        assert left_alone.getvalue() == ""


class TestEventLines:
    async def test_nats_client_errors_are_rate_limited(self) -> None:
        connection = _connection()
        for _ in range(20):  # one per failed reconnect attempt
            await connection._on_error(ConnectionRefusedError("connect refused"))
        await connection._on_error(OSError("another reason"))
        records = _logger(connection).find("nats client error")
        assert len(records) == 2
        clock = FakeTime()
        connection._error_repeats = RepeatLimiter(30.0, clock=clock)
        await connection._on_error(ConnectionRefusedError("connect refused"))
        await connection._on_error(ConnectionRefusedError("connect refused"))
        clock.now += 30
        await connection._on_error(ConnectionRefusedError("connect refused"))
        assert _logger(connection).find("nats client error")[-1].tags["repeated"] == 1

    async def test_nats_dead_letter_lines_carry_the_event_and_request_ids(self) -> None:
        async def reject(event: Event) -> None:
            raise Reject("never")

        connection = _connection()
        _storing(connection)
        sub = _subscription(connection, reject)
        _, headers = event_codec.encode(EVENT, request_id="req-dead-1")
        await sub._process(delivery(headers=headers))
        (record,) = _logger(connection).find("event dead-lettered")
        line = record.to_dict()
        assert line["event_id"] == EVENT.id
        assert line["request_id"] == "req-dead-1"
