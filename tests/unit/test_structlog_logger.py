"""StructlogLogger: real stdout of a real process, settings, formats, robustness."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from adapters.env_config import Secret
from adapters.memory import InMemoryConfig
from adapters.structlog_logger import StructlogLogger, configure_logging
from domain_errors import ConfigurationError
from ports.context import bind_context

ROOT = Path(__file__).resolve().parents[2]


def run_script(body: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter with stdout a pipe; return the finished process."""
    script = "import os, sys\nsys.path.insert(0, os.getcwd())\n" + textwrap.dedent(body)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "SERVICE_"))}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def logger(level: str = "debug", **config: str) -> tuple[StructlogLogger, io.BytesIO]:
    stream = io.BytesIO()
    log = configure_logging(InMemoryConfig({"LOG_LEVEL": level, **config}), stream=stream)
    assert isinstance(log, StructlogLogger)
    return log, stream


def lines_of(stream: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestRealProcess:
    def test_json_lines_on_stdout_with_settings_from_the_environment(self) -> None:
        """A process configured by SERVICE_NAME/LOG_LEVEL writes one JSON object per line."""
        result = run_script(
            """
            from adapters.env_config import EnvConfig
            from adapters.structlog_logger import configure_logging
            from ports.context import bind_context
            log = configure_logging(EnvConfig(env_file=None))
            log.debug("hidden")
            with bind_context(request_id="req-42"):
                log.info("order placed", order_id="o1", password="pw")
            log.warning("low stock", sku="s1")
            """,
            SERVICE_NAME="orders",
            LOG_LEVEL="info",
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        first, second = json_lines(result.stdout)
        assert list(first)[:5] == ["timestamp", "level", "message", "service", "request_id"]
        assert first["timestamp"].endswith("Z")
        assert (first["level"], first["message"], first["service"]) == (
            "info",
            "order placed",
            "orders",
        )
        assert (first["request_id"], first["order_id"], first["password"]) == (
            "req-42",
            "o1",
            "[REDACTED]",
        )
        assert (second["level"], second["sku"]) == ("warning", "s1")
        assert "request_id" not in second

    def test_fatal_line_is_flushed_before_exit(self) -> None:
        """fatal flushes: the line is on the pipe even when the process skips exit-time flushes."""
        result = run_script(
            """
            from adapters.memory import InMemoryConfig
            from adapters.structlog_logger import configure_logging
            log = configure_logging(InMemoryConfig({"SERVICE_NAME": "svc"}))
            print("plain output before", flush=False)
            try:
                log.fatal("cannot start", reason="no database")
            except SystemExit as exit:
                os._exit(10 + exit.code)  # no interpreter shutdown, no implicit flush
            """
        )
        assert result.returncode == 11
        line = json_lines(result.stdout.splitlines()[-1])[0]
        assert (line["level"], line["message"], line["reason"]) == (
            "fatal",
            "cannot start",
            "no database",
        )

    def test_uncaught_fatal_exits_with_status_1(self) -> None:
        """A fatal call that nobody catches ends the process with exit status 1."""
        result = run_script(
            """
            from adapters.memory import InMemoryConfig
            from adapters.structlog_logger import configure_logging
            configure_logging(InMemoryConfig({})).fatal("bye")
            """
        )
        assert result.returncode == 1
        assert json_lines(result.stdout)[0]["message"] == "bye"

    def test_console_format_is_for_humans(self) -> None:
        """LOG_FORMAT=console writes readable text with the traceback, not JSON."""
        result = run_script(
            """
            from adapters.env_config import EnvConfig
            from adapters.structlog_logger import configure_logging
            log = configure_logging(EnvConfig(env_file=None))
            log.info("ready", port=8080, token="tk-1")
            try:
                {}["missing"]
            except KeyError:
                log.error("lookup failed")
            """,
            LOG_FORMAT="console",
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert "ready" in lines[0]
        assert "port=8080" in lines[0]
        assert "token=[REDACTED]" in lines[0]
        assert "tk-1" not in result.stdout
        assert "Traceback" in result.stdout
        assert "KeyError" in result.stdout
        with pytest.raises(json.JSONDecodeError):
            json.loads(lines[0])


class TestSettings:
    @pytest.mark.parametrize(
        ("setting", "number"),
        [("debug", 10), ("INFO", 20), ("Warning", 30), ("warn", 30), ("error", 40)],
    )
    def test_log_level_names_any_case(self, setting: str, number: int) -> None:
        """LOG_LEVEL accepts the level names in any case, and warn for warning."""
        log, _ = logger(setting)
        assert log.level == number

    def test_defaults(self) -> None:
        """Without settings: service "app", level info, JSON."""
        stream = io.BytesIO()
        log = configure_logging(InMemoryConfig({}), stream=stream)
        log.debug("hidden")
        log.info("shown")
        (line,) = lines_of(stream)
        assert (line["service"], line["message"]) == ("app", "shown")

    @pytest.mark.parametrize(("key", "value"), [("LOG_LEVEL", "verbose"), ("LOG_FORMAT", "xml")])
    def test_unknown_level_or_format_is_a_configuration_error(self, key: str, value: str) -> None:
        """An unknown LOG_LEVEL or LOG_FORMAT names the setting and what it accepts."""
        with pytest.raises(ConfigurationError, match=key):
            configure_logging(InMemoryConfig({key: value}), stream=io.BytesIO())

    def test_no_global_structlog_state(self) -> None:
        """configure_logging leaves structlog's global config alone; loggers are independent."""
        before = structlog.get_config()
        quiet, quiet_out = logger("error", SERVICE_NAME="a")
        loud, loud_out = logger("debug", SERVICE_NAME="b")
        quiet.info("nope")
        loud.info("yes")
        assert structlog.get_config() == before
        assert lines_of(quiet_out) == []
        assert lines_of(loud_out)[0]["service"] == "b"

    def test_extra_structlog_processors_run_before_rendering(self) -> None:
        """Processors given to configure_logging see and may change the event dict."""

        def add_region(_: Any, __: str, event: Any) -> Any:
            event["region"] = "eu"
            return event

        stream = io.BytesIO()
        log = configure_logging(InMemoryConfig({}), stream=stream, processors=[add_region])
        log.info("x")
        assert lines_of(stream)[0]["region"] == "eu"


class TestConsoleFormat:
    def test_console_lines_in_process(self) -> None:
        """Console format: timestamp Z, level, message, tags, redaction, traceback."""
        stream = io.StringIO()
        log = configure_logging(InMemoryConfig({"LOG_FORMAT": "Console"}), stream=stream)
        with bind_context(request_id="r-1"):
            log.info("ready", port=8080, password="pw-9")
        log.error("failed", exc=ValueError("bad input"))
        first, *rest = stream.getvalue().splitlines()
        assert first.split(" ", 1)[0].endswith("Z")
        assert "[info" in first
        assert "ready" in first
        assert "request_id=r-1" in first
        assert "password=[REDACTED]" in first
        assert "pw-9" not in stream.getvalue()
        assert any("ValueError: bad input" in line for line in rest)

    def test_console_renderer_tolerates_processors_that_reshape_the_event(self) -> None:
        """A processor that replaces the timestamp or error does not break console output."""

        def reshape(_: Any, __: str, event: Any) -> Any:
            event["timestamp"] = "earlier"
            event["error"] = "just text"
            return event

        stream = io.StringIO()
        log = configure_logging(
            InMemoryConfig({"LOG_FORMAT": "console"}), stream=stream, processors=[reshape]
        )
        log.info("x")
        assert stream.getvalue().startswith("earlier")
        assert "error='just text'" in stream.getvalue()


class TestFiltering:
    def test_a_filtered_call_does_no_work(self) -> None:
        """Below the level, tags are never looked at and the stream is never touched."""

        class Explosive:
            def __repr__(self) -> str:
                raise AssertionError("formatted a filtered-out call")

            __str__ = __repr__

        class NoWrites(io.BytesIO):
            def write(self, data: Any) -> int:
                raise AssertionError("wrote a filtered-out call")

        log = StructlogLogger(service="s", level="error", stream=NoWrites())
        with bind_context(request_id="r"):
            log.debug("x", thing=Explosive())
            log.info("x", thing=Explosive())
            log.warning("x", thing=Explosive())
        assert log.dropped == 0


class TestValues:
    def test_values_orjson_cannot_encode_are_still_written(self) -> None:
        """Sets, objects, Secrets, datetimes, huge ints and lone surrogates never break a line."""
        log, stream = logger()
        log.info("set", value={3})
        log.info("object", value=Path("/tmp/x"))
        log.info("secret", value=Secret("pw"))
        log.info("when", value=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
        log.info("huge", value=2**80)
        log.info("surrogate \udc80", value="bad \udcff")
        lines = lines_of(stream)
        assert [line["value"] for line in lines[:4]] == [
            [3],
            "/tmp/x",
            "***",
            "2030-01-02T03:04:05Z",
        ]
        assert lines[4]["value"] == 2**80
        assert lines[4]["timestamp"].endswith("Z")
        assert lines[5]["value"] == "bad \udcff"

    def test_objects_written_with_str_are_redacted_too(self) -> None:
        """An object whose str() is a URL with a password is written without the password."""

        class Url:
            def __str__(self) -> str:
                return "amqp://guest:pw-in-object@mq:5672/"

        log, stream = logger()
        log.info("broker", url=Url(), hosts={"redis://:pw-in-set@cache"})
        (line,) = lines_of(stream)
        assert line["url"] == "amqp://guest:[REDACTED]@mq:5672/"
        assert line["hosts"] == ["redis://:[REDACTED]@cache"]
        assert b"pw-in" not in stream.getvalue()

    def test_slow_path_keeps_a_processor_timestamp(self) -> None:
        """When json takes over (huge int) a timestamp already made text is kept as is."""

        def stamp_as_text(_: Any, __: str, event: Any) -> Any:
            event["timestamp"] = "2030-01-01T00:00:00Z"
            return event

        stream = io.BytesIO()
        log = configure_logging(InMemoryConfig({}), stream=stream, processors=[stamp_as_text])
        log.info("huge", value=2**80)
        assert lines_of(stream)[0]["timestamp"] == "2030-01-01T00:00:00Z"

    def test_a_stream_that_only_says_its_mode_is_binary(self) -> None:
        """An object with write/flush and mode "wb" (not an io class) is given bytes."""

        class Sink:
            mode = "wb"

            def __init__(self) -> None:
                self.data: list[Any] = []

            def write(self, data: Any) -> int:
                self.data.append(data)
                return len(data)

            def flush(self) -> None:
                return None

        sink = Sink()
        StructlogLogger(service="s", stream=sink).info("x")  # type: ignore[arg-type]
        assert isinstance(sink.data[0], bytes)

    def test_fatal_level_filters_errors(self) -> None:
        """At level fatal (alias critical) even error is filtered; fatal still writes."""
        stream = io.BytesIO()
        log = StructlogLogger(service="s", level="critical", stream=stream)
        log.error("filtered")
        with pytest.raises(SystemExit):
            log.fatal("kept")
        assert [line["message"] for line in lines_of(stream)] == ["kept"]

    def test_a_cycle_is_cut_not_fatal(self) -> None:
        """A self-containing tag is written once, its repetition as "[...]"."""
        log, stream = logger()
        cyclic: list[Any] = []
        cyclic.append(cyclic)
        log.info("cycle", value={"inner": cyclic})
        (line,) = lines_of(stream)
        depth, node = 0, line["value"]["inner"]
        while isinstance(node, list):
            node, depth = node[0], depth + 1
        assert (node, depth) == ("[...]", 1)

    def test_a_value_that_cannot_be_written_still_writes_the_standard_fields(self) -> None:
        """A tag whose str() raises: the line keeps every field and says which failed."""

        class Unprintable:
            def __str__(self) -> str:
                raise RuntimeError("no")

        log, stream = logger()
        log.info("odd", value=Unprintable(), other=1)
        (line,) = lines_of(stream)
        assert (line["level"], line["message"], line["other"]) == ("info", "odd", 1)
        assert line["value"] == "<Unprintable: str() failed>"

    def test_a_broken_stream_never_raises(self) -> None:
        """A stream whose write and flush fail drops the lines (counted) instead of raising."""

        class BrokenPipe(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, data: Any) -> int:
                raise BrokenPipeError

            def flush(self) -> None:
                raise BrokenPipeError

        log = StructlogLogger(service="s", stream=BrokenPipe())
        log.info("lost")
        with pytest.raises(SystemExit):
            log.fatal("also lost")
        assert log.dropped == 3  # two lines, one final flush

    def test_binary_file_and_text_stream_both_work(self, tmp_path: Path) -> None:
        """A file opened "wb" gets bytes, a text stream gets str; both hold the same JSON."""
        with (tmp_path / "log.jsonl").open("wb") as raw:
            StructlogLogger(service="s", stream=raw).info("to bytes", n=1)
        text = io.StringIO()
        StructlogLogger(service="s", stream=text).info("to text", n=1)
        first = json.loads((tmp_path / "log.jsonl").read_text())
        second = json.loads(text.getvalue())
        assert (first["message"], second["message"]) == ("to bytes", "to text")

    def test_threads_never_interleave_lines(self, tmp_path: Path) -> None:
        """Eight threads writing to one real file produce only whole, parseable lines."""
        path = tmp_path / "threads.jsonl"
        with path.open("w", encoding="utf-8") as out:
            log = StructlogLogger(service="s", stream=out)
            start = threading.Barrier(8)

            def work(n: int) -> None:
                start.wait(timeout=5)
                for i in range(100):
                    log.bind(thread=n).info("tick", i=i, pad="x" * 200)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=10)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines) == 800
        assert {(line["thread"], line["i"]) for line in lines} == {
            (n, i) for n in range(8) for i in range(100)
        }

    def test_bind_and_repr(self) -> None:
        """bind keeps level and output; repr names service and level, no tags."""
        log, stream = logger("warning", SERVICE_NAME="svc")
        child = log.bind(api_key="k-1", part="x")
        child.info("filtered")
        child.warning("kept")
        (line,) = lines_of(stream)
        assert (line["api_key"], line["part"]) == ("[REDACTED]", "x")
        assert repr(child) == "StructlogLogger(service='svc', level=30)"
