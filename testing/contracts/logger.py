"""The Logger contract, run against every Logger adapter.

Subclass :class:`LoggerContract` and provide a ``make_logger`` fixture returning a
:class:`LoggerFactory`: ``make_logger(level=..., service=...)`` builds a fresh
logger and a function that returns, as JSON-compatible dicts, every record that
logger (and loggers bound from it) wrote so far, oldest first. For a logger that
writes JSON lines, that function parses the lines from the real stream::

    class TestRecordingLogger(LoggerContract):
        @pytest.fixture
        def make_logger(self) -> LoggerFactory:
            def make(*, level="debug", service="contract"):
                log = RecordingLogger(level=level, service=service)
                return log, lambda: [r.to_dict() for r in log.records]
            return make
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ports.context import bind_context
from ports.logger import REDACTED, RESERVED_FIELDS, Logger
from testing._strategies_config import secret_texts

__all__ = ["LoggerContract", "LoggerFactory", "Records"]

Records = Callable[[], list[dict[str, Any]]]

_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
)


class LoggerFactory(Protocol):
    """Builds the Logger under test and a reader of what it wrote."""

    def __call__(
        self, *, level: str = "debug", service: str = "contract"
    ) -> tuple[Logger, Records]: ...


def _fail_lookup(key: str) -> None:
    raise KeyError(key)


def _only(records: Records) -> dict[str, Any]:
    lines = records()
    assert len(lines) == 1, f"expected exactly one record, got {lines!r}"
    return lines[0]


class LoggerContract:
    """Contract of :class:`ports.logger.Logger`. Needs fixture ``make_logger``."""

    # -- shape of a record --------------------------------------------------------

    def test_is_a_logger(self, make_logger: LoggerFactory) -> None:
        """The adapter implements the Logger protocol."""
        log, _ = make_logger()
        assert isinstance(log, Logger)

    def test_record_has_the_standard_fields_first(self, make_logger: LoggerFactory) -> None:
        """timestamp, level, message, service come first, in that order, then the tags."""
        log, records = make_logger(service="orders")
        log.info("order placed", order_id="o1", total=12.5, items=3, paid=True, note=None)
        line = _only(records)
        assert list(line)[:4] == ["timestamp", "level", "message", "service"]
        assert line["level"] == "info"
        assert line["message"] == "order placed"
        assert line["service"] == "orders"
        assert {k: line[k] for k in ("order_id", "total", "items", "paid", "note")} == {
            "order_id": "o1",
            "total": 12.5,
            "items": 3,
            "paid": True,
            "note": None,
        }

    def test_timestamp_is_rfc3339_utc_now(self, make_logger: LoggerFactory) -> None:
        """The timestamp is RFC 3339 in UTC with a Z, and is the time of the call."""
        log, records = make_logger()
        before = datetime.now(UTC)
        log.info("tick")
        after = datetime.now(UTC)
        stamp = _only(records)["timestamp"]
        assert _RFC3339_UTC.fullmatch(stamp), stamp
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - timedelta(seconds=1) <= when <= after + timedelta(seconds=1)

    def test_nested_tags_are_kept(self, make_logger: LoggerFactory) -> None:
        """Lists and mappings in tags are written as JSON arrays and objects."""
        log, records = make_logger()
        log.info("batch", ids=["a", "b"], stats={"n": 2, "ok": True})
        line = _only(records)
        assert line["ids"] == ["a", "b"]
        assert line["stats"] == {"n": 2, "ok": True}

    # -- levels -------------------------------------------------------------------------

    @pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
    def test_each_level_method_writes_its_level(
        self, make_logger: LoggerFactory, level: str
    ) -> None:
        """debug/info/warning/error each write a record with that level name."""
        log, records = make_logger(level="debug")
        getattr(log, level)("hello")
        assert _only(records)["level"] == level

    def test_warn_is_an_alias_of_warning(self, make_logger: LoggerFactory) -> None:
        """warn writes level "warning"."""
        log, records = make_logger()
        log.warn("careful")
        assert _only(records)["level"] == "warning"

    @pytest.mark.parametrize(
        ("minimum", "written"),
        [
            ("debug", ["debug", "info", "warning", "error"]),
            ("info", ["info", "warning", "error"]),
            ("warning", ["warning", "error"]),
            ("error", ["error"]),
        ],
    )
    def test_calls_below_the_level_write_nothing(
        self, make_logger: LoggerFactory, minimum: str, written: list[str]
    ) -> None:
        """Only calls at or above the configured level are written."""
        log, records = make_logger(level=minimum)
        for level in ("debug", "info", "warning", "error"):
            getattr(log, level)(f"at {level}")
        assert [line["level"] for line in records()] == written

    def test_fatal_is_never_filtered_and_exits_1(self, make_logger: LoggerFactory) -> None:
        """fatal writes its record even at level error, then raises SystemExit(1)."""
        log, records = make_logger(level="error")
        with pytest.raises(SystemExit) as info:
            log.fatal("cannot start", reason="no database")
        assert info.value.code == 1
        line = _only(records)
        assert (line["level"], line["message"], line["reason"]) == (
            "fatal",
            "cannot start",
            "no database",
        )

    # -- bind -----------------------------------------------------------------------------

    def test_bind_adds_tags_without_changing_the_receiver(self, make_logger: LoggerFactory) -> None:
        """A bound logger adds its tags; the original logger is unchanged."""
        log, records = make_logger()
        child = log.bind(component="billing")
        grandchild = child.bind(tenant="t1")
        log.info("root")
        child.info("child")
        grandchild.info("grandchild", extra=1)
        root, one, two = records()
        assert "component" not in root
        assert one["component"] == "billing"
        assert "tenant" not in one
        assert (two["component"], two["tenant"], two["extra"]) == ("billing", "t1", 1)

    def test_call_tags_win_over_bound_tags(self, make_logger: LoggerFactory) -> None:
        """A tag given at the call replaces a bound tag of the same name."""
        log, records = make_logger()
        log.bind(step="bound").info("x", step="call")
        assert _only(records)["step"] == "call"

    # -- request context ---------------------------------------------------------------------

    def test_context_values_are_written(self, make_logger: LoggerFactory) -> None:
        """Inside bind_context the record carries request_id (and any other values)."""
        log, records = make_logger()
        with bind_context(request_id="req-1", event_id="evt-9"):
            log.info("inside")
        log.info("outside")
        inside, outside = records()
        assert (inside["request_id"], inside["event_id"]) == ("req-1", "evt-9")
        assert "request_id" not in outside

    def test_context_comes_before_tags(self, make_logger: LoggerFactory) -> None:
        """Context values follow the standard fields and precede the tags."""
        log, records = make_logger()
        with bind_context(request_id="req-1"):
            log.bind(bound=1).info("x", tag=2)
        keys = list(_only(records))
        assert keys.index("service") < keys.index("request_id") < keys.index("bound")
        assert keys.index("bound") < keys.index("tag")

    async def test_concurrent_tasks_never_see_each_others_context(
        self, make_logger: LoggerFactory
    ) -> None:
        """Two interleaved asyncio tasks each log only their own request_id."""
        log, records = make_logger()
        turn = {"a": asyncio.Event(), "b": asyncio.Event()}

        async def handle(name: str, other: str) -> None:
            with bind_context(request_id=f"req-{name}"):
                for step in range(3):
                    log.info("step", task=name, step=step)
                    turn[other].set()
                    await turn[name].wait()
                    turn[name].clear()
                turn[other].set()

        await asyncio.wait_for(asyncio.gather(handle("a", "b"), handle("b", "a")), timeout=5)
        lines = records()
        assert len(lines) == 6
        assert {line["task"] for line in lines[:2]} == {"a", "b"}, "tasks did not interleave"
        for line in lines:
            assert line["request_id"] == f"req-{line['task']}"

    # -- reserved fields and redaction ----------------------------------------------------------

    @pytest.mark.parametrize("name", sorted(RESERVED_FIELDS))
    def test_a_tag_never_overwrites_a_reserved_field(
        self, make_logger: LoggerFactory, name: str
    ) -> None:
        """A tag named like a reserved field is kept as tag_<name>; the field is intact."""
        log, records = make_logger(service="svc")
        log.info("real message", **{name: "from tag"})
        line = _only(records)
        assert line[f"tag_{name}"] == "from tag"
        assert line["message"] == "real message"
        assert line["level"] == "info"
        assert line["service"] == "svc"
        assert name in ("error", "logger") or line[name] != "from tag"

    def test_reserved_names_in_bind_and_context_are_renamed_too(
        self, make_logger: LoggerFactory
    ) -> None:
        """bind(level=...) and bind_context(service=...) cannot overwrite fields either."""
        log, records = make_logger(service="svc")
        with bind_context(service="ctx"):
            log.bind(level="bound").warning("x")
        line = _only(records)
        assert (line["level"], line["service"]) == ("warning", "svc")
        assert (line["tag_level"], line["tag_service"]) == ("bound", "ctx")

    @pytest.mark.parametrize(
        "key",
        ["password", "db_password", "secret", "client_secret", "token", "access_token",
         "api_key", "apikey", "authorization", "Authorization", "cookie", "set_cookie"],
    )  # fmt: skip
    def test_secret_looking_keys_are_redacted(self, make_logger: LoggerFactory, key: str) -> None:
        """The value of a secret-looking tag is written as [REDACTED]."""
        log, records = make_logger()
        log.info("login", user="ann", **{key: "hunter2-value"})
        line = _only(records)
        assert line[key] == REDACTED
        assert line["user"] == "ann"
        assert "hunter2-value" not in repr(line)

    def test_secrets_are_redacted_at_any_depth(self, make_logger: LoggerFactory) -> None:
        """Secret keys inside nested mappings and lists are redacted as well."""
        log, records = make_logger()
        log.info("cfg", db={"host": "h", "password": "pw-1"}, peers=[{"token": "tk-2"}])
        line = _only(records)
        assert line["db"] == {"host": "h", "password": REDACTED}
        assert line["peers"] == [{"token": REDACTED}]

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("postgresql://app:pa55@db:5432/x", f"postgresql://app:{REDACTED}@db:5432/x"),
            ("nats://u:p%40ss@n:4222", f"nats://u:{REDACTED}@n:4222"),
            ("redis://:only-pw@cache/0", f"redis://:{REDACTED}@cache/0"),
            ("https://example.com/a?b=c", "https://example.com/a?b=c"),
        ],
    )
    def test_passwords_in_urls_are_redacted(
        self, make_logger: LoggerFactory, url: str, shown: str
    ) -> None:
        """A URL's password is [REDACTED] in tags and in the message; the rest is kept."""
        log, records = make_logger()
        log.info(f"connecting to {url}", url=url)
        line = _only(records)
        assert line["url"] == shown
        assert line["message"] == f"connecting to {shown}"

    @_PROPERTY
    @given(
        secret=secret_texts(), where=st.sampled_from(["tag", "nested", "url", "message", "bind"])
    )
    def test_a_generated_secret_never_appears(
        self, make_logger: LoggerFactory, secret: str, where: str
    ) -> None:
        """Whatever the secret and wherever it is put, the written record never contains it."""
        log, records = make_logger()
        url = f"postgresql://app:{secret}@db/app"
        if where == "tag":
            log.info("x", password=secret)
        elif where == "nested":
            log.info("x", settings={"auth": {"api_key": secret}})
        elif where == "url":
            log.info("x", dsn=url)
        elif where == "message":
            log.info(f"connect {url} failed")
        else:
            log.bind(session_token=secret).info("x")
        assert secret not in repr(records())

    # -- errors ---------------------------------------------------------------------------------

    def test_error_with_exc_records_type_message_and_stack(
        self, make_logger: LoggerFactory
    ) -> None:
        """error(exc=...) writes error: {type, message, stack} with the traceback."""
        log, records = make_logger()
        try:
            _fail_lookup("order o-1")
        except KeyError as caught:
            exc = caught
        log.error("lookup failed", exc=exc, order_id="o-1")
        line = _only(records)
        assert line["error"]["type"] == "KeyError"
        assert "order o-1" in line["error"]["message"]
        assert "Traceback" in line["error"]["stack"]
        assert "_fail_lookup" in line["error"]["stack"]
        assert line["order_id"] == "o-1"

    def test_error_inside_except_captures_the_current_exception(
        self, make_logger: LoggerFactory
    ) -> None:
        """Called inside except without exc, error records the exception being handled."""
        log, records = make_logger()
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            log.error("math failed")
        assert _only(records)["error"]["type"] == "ZeroDivisionError"

    def test_error_outside_except_has_no_error_field(self, make_logger: LoggerFactory) -> None:
        """Without exc and outside except there is no error field."""
        log, records = make_logger()
        log.error("plain error")
        assert "error" not in _only(records)

    def test_error_text_is_redacted(self, make_logger: LoggerFactory) -> None:
        """A URL password inside an exception message does not reach the record."""
        log, records = make_logger()
        log.error("connect failed", exc=ConnectionError("postgresql://u:pw-77@h/db refused"))
        assert "pw-77" not in repr(_only(records))

    def test_fatal_records_the_exception(self, make_logger: LoggerFactory) -> None:
        """fatal(exc=...) writes the error object like error does."""
        log, records = make_logger()
        with pytest.raises(SystemExit):
            log.fatal("giving up", exc=RuntimeError("broken"))
        assert _only(records)["error"]["type"] == "RuntimeError"
