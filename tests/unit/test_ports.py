"""ports: Event validation, request context isolation, clocks, key normalisation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain_errors import BadRequest
from ports import Event, PublishAck, SystemClock
from ports.config import MISSING, normalize_key
from ports.context import bind_context, current_context, request_id
from ports.events import DeadLetter, Reject, format_timestamp, parse_timestamp
from testing.fakes import FakeClock


def make_event(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "type": "order.placed",
        "source": "orders",
        "organization_id": "org-1",
    }
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


class TestEventValidation:
    @pytest.mark.parametrize("field", ["type", "source", "organization_id", "id"])
    @pytest.mark.parametrize("value", ["", "   ", None, 3])
    def test_empty_text_fields_are_bad_requests(self, field: str, value: object) -> None:
        """Empty or non-string type/source/organization_id/id raise BadRequest naming it."""
        with pytest.raises(BadRequest) as info:
            make_event(**{field: value})
        assert info.value.details["field"] == field

    def test_naive_timestamp_is_rejected(self) -> None:
        """A timestamp without a timezone is refused."""
        with pytest.raises(BadRequest, match="timezone"):
            make_event(timestamp=datetime(2030, 1, 1))

    def test_timestamp_is_normalised_to_utc(self) -> None:
        """An aware timestamp in another zone is stored as the same instant in UTC."""
        ts = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
        event = make_event(timestamp=ts)
        assert event.timestamp == ts
        assert event.timestamp.tzinfo is UTC

    @pytest.mark.parametrize(
        "data",
        [{"x": object()}, {"x": float("nan")}, {"x": {1: "a"}}, {"x": {1, 2}}, ["not", "a", "map"]],
    )
    def test_non_json_data_is_rejected(self, data: object) -> None:
        """data must be a JSON-compatible mapping."""
        with pytest.raises(BadRequest) as info:
            make_event(data=data)
        assert info.value.details["field"] == "data"

    def test_data_is_copied_from_the_caller(self) -> None:
        """Changing the caller's dict after construction does not change the event."""
        payload = {"items": [1, 2]}
        event = make_event(data=payload)
        payload["items"].append(3)
        assert event.data == {"items": [1, 2]}

    def test_defaults_make_unique_ids_and_aware_timestamps(self) -> None:
        """id and timestamp default to a fresh uuid and the current UTC time."""
        first, second = make_event(), make_event()
        assert first.id != second.id
        assert first.timestamp.tzinfo is UTC

    def test_event_is_frozen(self) -> None:
        """Events are immutable values."""
        event = make_event()
        with pytest.raises(AttributeError):
            event.type = "other"  # type: ignore[misc]


class TestEventJson:
    def test_json_shape_is_the_seeds(self) -> None:
        """to_json writes id, type, source, organization_id, timestamp (Z) and data."""
        event = make_event(
            id="e1", timestamp=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), data={"a": 1}
        )
        assert event.to_json() == (
            '{"id":"e1","type":"order.placed","source":"orders","organization_id":"org-1",'
            '"timestamp":"2030-01-02T03:04:05Z","data":{"a":1}}'
        )

    def test_round_trip(self) -> None:
        """from_json(to_json(e)) == e."""
        event = make_event(data={"nested": {"list": [1, 2.5, None, True, "x"]}})
        assert Event.from_json(event.to_json()) == event

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "{",
            "[]",
            '{"type":"t"}',
            '{"type":"t","source":"s","organization_id":"o","timestamp":"x"}',
            '{"type":"t","source":"s","organization_id":"o","timestamp":5}',
        ],
    )
    def test_bad_json_is_bad_request(self, text: str) -> None:
        """Anything that is not an event's JSON raises BadRequest."""
        with pytest.raises(BadRequest):
            Event.from_json(text)

    def test_timestamp_helpers(self) -> None:
        """format/parse agree; a naive RFC 3339 string is refused."""
        ts = datetime(2030, 1, 1, tzinfo=UTC)
        assert parse_timestamp(format_timestamp(ts)) == ts
        assert parse_timestamp(ts) == ts
        with pytest.raises(BadRequest):
            parse_timestamp("2030-01-01T00:00:00")


class TestValues:
    def test_publish_ack_and_dead_letter(self) -> None:
        """PublishAck defaults to not duplicate; DeadLetter keeps what it is given."""
        assert PublishAck("EVENTS", 3) == PublishAck("EVENTS", 3, duplicate=False)
        dead = DeadLetter(subject="a", durable="d", reason="rejected", attempts=1, event=None)
        assert (dead.payload, dict(dead.headers), dead.error) == (b"", {}, None)

    def test_reject_carries_reason(self) -> None:
        """Reject keeps its reason for the dead letter."""
        assert Reject("bad sku").reason == "bad sku"
        assert Reject().reason == "rejected by handler"


class TestContext:
    def test_bind_nests_and_restores(self) -> None:
        """Inner binds add to outer ones and are undone on exit, also on error."""
        assert current_context() == {}
        with bind_context(request_id="r1", skip=None):
            assert request_id() == "r1"
            assert "skip" not in current_context()
            inner: dict[str, object] = {}

            def fail_inside() -> None:
                with bind_context(event_id="e1"):
                    inner.update(current_context())
                    raise RuntimeError

            with pytest.raises(RuntimeError):
                fail_inside()
            assert inner == {"request_id": "r1", "event_id": "e1"}
            assert current_context() == {"request_id": "r1"}
        assert request_id() is None

    async def test_concurrent_tasks_are_isolated(self) -> None:
        """Two tasks binding different request ids never see each other's."""
        seen: dict[str, list[str | None]] = {"a": [], "b": []}
        barrier = asyncio.Event()

        async def worker(name: str) -> None:
            with bind_context(request_id=name):
                await barrier.wait()
                for _ in range(3):
                    seen[name].append(request_id())
                    await asyncio.sleep(0)

        tasks = [asyncio.create_task(worker("a")), asyncio.create_task(worker("b"))]
        await asyncio.sleep(0)
        barrier.set()
        await asyncio.gather(*tasks)
        assert seen == {"a": ["a"] * 3, "b": ["b"] * 3}
        assert request_id() is None

    def test_context_is_read_only(self) -> None:
        """current_context() cannot be changed in place."""
        with bind_context(request_id="r"), pytest.raises(TypeError):
            current_context()["request_id"] = "x"  # type: ignore[index]


class TestClocks:
    async def test_system_clock(self) -> None:
        """SystemClock gives aware UTC now, a monotonic that does not go back, and sleeps."""
        clock = SystemClock()
        before = clock.monotonic()
        await clock.sleep(0)
        assert clock.monotonic() >= before
        assert clock.now().tzinfo is UTC
        assert repr(clock) == "SystemClock()"

    async def test_fake_clock_wakes_sleepers_in_deadline_order(self) -> None:
        """FakeClock sleepers wake only when advanced past their deadline, in order."""
        clock = FakeClock()
        woke: list[str] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(name)

        tasks = [asyncio.create_task(sleeper("late", 2)), asyncio.create_task(sleeper("early", 1))]
        await asyncio.sleep(0)
        assert clock.sleepers == 2
        assert clock.next_deadline() == 1
        clock.advance(1)
        await asyncio.sleep(0)
        assert woke == ["early"]
        clock.advance(1)
        await asyncio.gather(*tasks)
        assert woke == ["early", "late"]
        assert clock.next_deadline() is None
        assert clock.now() == datetime(2030, 1, 1, 0, 0, 2, tzinfo=UTC)
        assert clock.monotonic() == 2

    async def test_fake_clock_zero_sleep_only_yields(self) -> None:
        """sleep(0) returns without an advance."""
        clock = FakeClock()
        await asyncio.wait_for(clock.sleep(0), timeout=1)

    def test_fake_clock_refuses_bad_input(self) -> None:
        """FakeClock rejects going backwards and naive start times."""
        with pytest.raises(ValueError, match="backwards"):
            FakeClock().advance(-1)
        with pytest.raises(ValueError, match="aware"):
            FakeClock(datetime(2030, 1, 1))
        assert "2030" in repr(FakeClock())


class TestConfigKeys:
    @pytest.mark.parametrize(
        "key", ["database.url", "DATABASE_URL", "database_url", " Database-Url "]
    )
    def test_spellings_name_one_setting(self, key: str) -> None:
        """`.`, `_`, `-` and case all name the same setting."""
        assert normalize_key(key) == "DATABASE_URL"

    def test_missing_marker(self) -> None:
        """MISSING is a falsy singleton."""
        assert not MISSING
        assert repr(MISSING) == "MISSING"
        assert type(MISSING)() is MISSING
