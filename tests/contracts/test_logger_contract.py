"""The Logger contract on RecordingLogger and on StructlogLogger (real JSON lines)."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest

from adapters.structlog_logger import StructlogLogger
from ports.logger import Logger
from testing.contracts.logger import LoggerContract, LoggerFactory, Records
from testing.fakes import RecordingLogger


class TestRecordingLogger(LoggerContract):
    """RecordingLogger: records as LogRecord.to_dict()."""

    @pytest.fixture
    def make_logger(self) -> LoggerFactory:
        def make(*, level: str = "debug", service: str = "contract") -> tuple[Logger, Records]:
            log = RecordingLogger(level=level, service=service)
            return log, lambda: [r.to_dict() for r in log.records]

        return make


class TestStructlogLoggerBinaryStream(LoggerContract):
    """StructlogLogger writing bytes: each line of the real stream parsed as JSON."""

    @pytest.fixture
    def make_logger(self) -> LoggerFactory:
        def make(*, level: str = "debug", service: str = "contract") -> tuple[Logger, Records]:
            stream = io.BytesIO()
            log = StructlogLogger(service=service, level=level, stream=stream)

            def records() -> list[dict[str, Any]]:
                data = stream.getvalue()
                assert data == b"" or data.endswith(b"\n"), "a line was left unterminated"
                return [orjson.loads(line) for line in data.splitlines()]

            return log, records

        return make


class TestStructlogLoggerTextStream(LoggerContract):
    """StructlogLogger writing to a text stream (like sys.stdout)."""

    @pytest.fixture
    def make_logger(self) -> LoggerFactory:
        def make(*, level: str = "debug", service: str = "contract") -> tuple[Logger, Records]:
            stream = io.StringIO()
            log = StructlogLogger(service=service, level=level, stream=stream)
            return log, lambda: [orjson.loads(line) for line in stream.getvalue().splitlines()]

        return make
