"""RecordingLogger: the assertion helpers a service's own tests use."""

from __future__ import annotations

import re

import pytest

from domain_errors import ConfigurationError, NotFound
from ports.context import bind_context
from testing.fakes import LogRecord, RecordingLogger


class OrderService:
    """A stand-in for consumer code that logs through the port."""

    def __init__(self, logger: RecordingLogger) -> None:
        self.log = logger.bind(component="orders")

    def place(self, order_id: str) -> None:
        self.log.info("order placed", order_id=order_id)

    def cancel(self, order_id: str) -> None:
        try:
            raise NotFound(f"order {order_id} not found")
        except NotFound:
            self.log.error("cancel failed", order_id=order_id)


@pytest.fixture
def log() -> RecordingLogger:
    return RecordingLogger()


class TestAssertLogged:
    def test_finds_a_record_from_a_bound_child(self, log: RecordingLogger) -> None:
        """Records of bound loggers are visible on the root; tags and level match."""
        OrderService(log).place("o1")
        record = log.assert_logged("order placed", level="info", order_id="o1")
        assert isinstance(record, LogRecord)
        assert record.tags == {"component": "orders", "order_id": "o1"}

    def test_matches_context_and_message_patterns(self, log: RecordingLogger) -> None:
        """Context values match like tags; a compiled regex is searched in the message."""
        with bind_context(request_id="req-7"):
            OrderService(log).place("o2")
        log.assert_logged(re.compile(r"placed$"), request_id="req-7", component="orders")

    def test_message_must_match_exactly_or_by_pattern(self, log: RecordingLogger) -> None:
        """A plain string is compared whole; a pattern that does not match finds nothing."""
        log.info("order placed")
        assert log.find("order") == []
        assert log.find(re.compile("^cancel")) == []
        assert len(log.find(re.compile("^order"))) == 1

    def test_matches_the_exception_class(self, log: RecordingLogger) -> None:
        """error=SomeError matches records whose exception is an instance of it."""
        OrderService(log).cancel("o3")
        record = log.assert_logged("cancel failed", error=NotFound)
        assert record.error is not None
        assert record.error["type"] == "NotFound"
        assert isinstance(record.exception, NotFound)
        with pytest.raises(AssertionError):
            log.assert_logged("cancel failed", error=KeyError)

    def test_failure_lists_what_was_captured(self, log: RecordingLogger) -> None:
        """When nothing matches, the message shows the criteria and every record."""
        OrderService(log).place("o1")
        with pytest.raises(AssertionError) as info:
            log.assert_logged("order placed", level="info", order_id="o9")
        text = str(info.value)
        assert "order_id='o9'" in text
        assert "1 record(s) captured" in text
        assert "order_id='o1'" in text

    def test_failure_on_an_empty_log_says_so(self, log: RecordingLogger) -> None:
        """With no records at all, the failure says nothing was logged."""
        with pytest.raises(AssertionError, match="nothing was logged"):
            log.assert_logged(level="error")

    def test_a_missing_field_does_not_match_none(self, log: RecordingLogger) -> None:
        """Asking for field=None matches only a record that has the field set to None."""
        log.info("a")
        log.info("b", note=None)
        assert [r.message for r in log.find(note=None)] == ["b"]


class TestAssertNotLogged:
    def test_passes_when_nothing_matches(self, log: RecordingLogger) -> None:
        """No matching record: no error."""
        OrderService(log).place("o1")
        log.assert_not_logged(level="error")
        log.assert_not_logged("order placed", order_id="other")

    def test_fails_naming_the_offending_records(self, log: RecordingLogger) -> None:
        """A matching record fails the assertion and is shown."""
        OrderService(log).cancel("o3")
        with pytest.raises(AssertionError, match=r"(?s)unexpected log record.*cancel failed"):
            log.assert_not_logged(level="error")


class TestInspection:
    def test_messages_by_level_records_and_clear(self, log: RecordingLogger) -> None:
        """messages() filters by level; records is a copy; clear() empties bound loggers too."""
        child = log.bind(x=1)
        log.debug("d")
        child.warn("w")
        log.error("e")
        assert log.messages() == ["d", "w", "e"]
        assert log.messages(level="warning") == ["w"]
        snapshot = log.records
        snapshot.clear()
        assert len(log) == 3
        child.clear()
        assert log.records == []

    def test_level_filtering(self) -> None:
        """RecordingLogger(level="warning") drops debug and info like the real logger."""
        log = RecordingLogger(level="warning")
        log.debug("d")
        log.info("i")
        log.warning("w")
        assert log.messages() == ["w"]

    def test_unknown_level_is_a_configuration_error(self) -> None:
        """An unknown level name is refused at construction."""
        with pytest.raises(ConfigurationError):
            RecordingLogger(level="loud")

    def test_str_and_repr_are_compact(self, log: RecordingLogger) -> None:
        """A record prints as level, message and fields; the logger shows count and tags."""
        log.bind(component="c").error("boom", exc=ValueError("bad"), n=1)
        assert str(log.records[0]) == "error 'boom' {component='c', n=1} error=ValueError"
        assert repr(log) == "RecordingLogger(records=1, bound=[])"
        assert repr(log.bind(b=1, a=2)) == "RecordingLogger(records=1, bound=['a', 'b'])"

    def test_to_dict_is_the_json_line_shape(self, log: RecordingLogger) -> None:
        """to_dict gives timestamp (Z), level, message, service, context, tags, error."""
        with bind_context(request_id="r1"):
            log.error("boom", exc=ValueError("bad"), n=1)
        line = log.records[0].to_dict()
        assert list(line) == [
            "timestamp",
            "level",
            "message",
            "service",
            "request_id",
            "n",
            "error",
        ]
        assert line["timestamp"].endswith("Z")
        assert line["error"]["message"] == "bad"

    def test_fatal_raises_system_exit(self, log: RecordingLogger) -> None:
        """fatal records, then raises SystemExit(1)."""
        with pytest.raises(SystemExit) as info:
            log.fatal("bye")
        assert info.value.code == 1
        log.assert_logged("bye", level="fatal")


class TestFieldKindCache:
    def test_many_distinct_tag_names_still_work(self, log: RecordingLogger) -> None:
        """Past the size of the field-name cache, names are still classified correctly."""
        for i in range(5000):
            log.info("m", **{f"field_{i}": i})
        log.info("m", late_password_999="pw", level="x")
        record = log.records[-1]
        assert record.tags == {"late_password_999": "[REDACTED]", "tag_level": "x"}


class TestValuesLikeTheJsonLine:
    def test_sets_and_tuples_become_lists_with_urls_redacted(self, log: RecordingLogger) -> None:
        """Containers are recorded as the JSON line writes them, passwords removed."""
        log.info("m", hosts={"redis://:pw-1@cache"}, pair=("a", "nats://u:pw-2@n"))
        record = log.records[0]
        assert record.tags["hosts"] == ["redis://:[REDACTED]@cache"]
        assert record.tags["pair"] == ["a", "nats://u:[REDACTED]@n"]
