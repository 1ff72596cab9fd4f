"""adapters.event_codec: CloudEvents binary mode on the wire, total decoding, fast JSON,
and interop with the cloudevents SDK (an implementation we did not write)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event, to_binary_event
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import event_codec
from adapters.event_codec import (
    EventDecodeError,
    decode,
    decode_message,
    encode,
    event_from_json,
    event_to_json,
    header_text,
    header_value,
    request_id_from_headers,
)
from domain_errors import BadRequest, ErrorCode
from ports.events import Event
from testing.strategies import event_texts, events, wire_headers

WHEN = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "id": "evt-1",
        "type": "order.placed",
        "source": "orders-service",
        "organization_id": "org-1",
        "timestamp": WHEN,
        "data": {"total": 12.5},
    }
    fields.update(overrides)
    return Event(**fields)


def _headers(**overrides: str | None) -> dict[str, str]:
    _, headers = encode(_event())
    for key, value in overrides.items():
        name = key.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


class TestEncoding:
    """What an event looks like on the wire."""

    def test_headers_and_body_follow_cloudevents_binary_mode(self) -> None:
        """ce-* headers, Content-Type, Nats-Msg-Id and the JSON of data as body."""
        body, headers = encode(_event(), request_id="req-7")
        assert json.loads(body) == {"total": 12.5}
        assert headers == {
            "ce-specversion": "1.0",
            "ce-id": "evt-1",
            "ce-type": "order.placed",
            "ce-source": "orders-service",
            "ce-time": "2030-01-02T03:04:05.678901Z",
            "ce-organizationid": "org-1",
            "ce-requestid": "req-7",
            "Content-Type": "application/json",
            "Nats-Msg-Id": "evt-1",
        }

    def test_no_request_id_header_without_a_request(self) -> None:
        """Without a request id, no ce-requestid header is sent."""
        _, headers = encode(_event())
        assert "ce-requestid" not in headers

    def test_header_values_are_percent_encoded_where_needed(self) -> None:
        """Space, quote, percent and non-ASCII are percent-encoded; the rest is kept."""
        assert header_value("plain-Value_1.2:3/4") == "plain-Value_1.2:3/4"
        assert header_value('a b"c%d') == "a%20b%22c%25d"
        assert header_value("ü\n") == "%C3%BC%0A"
        assert header_text(header_value('a b"c%d ü\n')) == 'a b"c%d ü\n'

    @settings(max_examples=60, deadline=None)
    @given(event=events(allow_surrogates=True), rid=event_texts(allow_surrogates=True))
    def test_header_values_are_safe_for_nats(self, event: Event, rid: str) -> None:
        """Every header value is printable ASCII without spaces at either end."""
        _, headers = encode(event, request_id=rid)
        for value in headers.values():
            assert value.isascii()
            assert value.isprintable()
            assert value == value.strip()

    def test_data_orjson_refuses_still_encodes(self) -> None:
        """Integers beyond 64 bits and lone surrogates fall back to stdlib JSON."""
        body, _ = encode(_event(data={"big": 2**80, "s": "\ud800"}))
        assert json.loads(body) == {"big": 2**80, "s": "\ud800"}


class TestRoundTrips:
    """Every event survives both round trips."""

    @settings(max_examples=150, deadline=None)
    @given(event=events(allow_surrogates=True), rid=st.none() | event_texts())
    def test_wire_round_trip(self, event: Event, rid: str | None) -> None:
        """decode(encode(e)) == e, and the request id comes back too."""
        body, headers = encode(event, request_id=rid)
        decoded = decode_message(body, headers)
        assert decoded.event == event
        assert decoded.request_id == rid

    @settings(max_examples=150, deadline=None)
    @given(event=events(allow_surrogates=True))
    def test_fast_json_round_trip_matches_the_port(self, event: Event) -> None:
        """event_to_json gives the same document as Event.to_json, and both read back."""
        fast = event_to_json(event)
        assert json.loads(fast) == json.loads(event.to_json())
        assert event_from_json(fast) == event
        assert event_from_json(fast.decode("utf-8", "surrogatepass")) == event
        assert Event.from_json(fast.decode("utf-8", "surrogatepass")) == event

    def test_big_integers_are_exact(self) -> None:
        """Integers of 20+ digits decode exactly, not as floats."""
        event = _event(data={"n": 2**70, "m": -(2**65), "f": 1.5})
        body, headers = encode(event)
        assert decode(body, headers).data == {"n": 2**70, "m": -(2**65), "f": 1.5}


class TestDecodingIsTotal:
    """Any input gives an Event or an EventDecodeError, nothing else."""

    @settings(max_examples=300, deadline=None)
    @given(body=st.binary(max_size=64) | st.just(b"{}"), headers=st.none() | wire_headers())
    def test_arbitrary_bytes_and_headers(self, body: bytes, headers: dict[str, str] | None) -> None:
        """decode returns an Event or raises EventDecodeError (a BadRequest)."""
        result: object
        try:
            result = decode(body, headers)
        except EventDecodeError as exc:
            result = exc
        if isinstance(result, EventDecodeError):
            assert isinstance(result, BadRequest)
            assert result.code == ErrorCode.DECODE_ERROR
        else:
            assert isinstance(result, Event)

    @settings(max_examples=150, deadline=None)
    @given(
        body=st.binary(max_size=40) | st.text(max_size=40) | st.just('{"type": 1}'),
    )
    def test_arbitrary_event_json(self, body: bytes | str) -> None:
        """event_from_json returns an Event or raises EventDecodeError."""
        result: object
        try:
            result = event_from_json(body)
        except EventDecodeError as exc:
            result = exc
        if isinstance(result, EventDecodeError):
            assert result.code == ErrorCode.DECODE_ERROR
        else:
            assert isinstance(result, Event)

    def test_deep_nesting_is_a_decode_error(self) -> None:
        """A body nested deeper than any parser allows is refused, not a crash."""
        body = b"[" * 100_000 + b"]" * 100_000
        with pytest.raises(EventDecodeError):
            decode(body, _headers())


class TestDecodeErrors:
    """Each kind of bad message names what is wrong."""

    @pytest.mark.parametrize(
        ("headers", "words"),
        [
            (None, "not a CloudEvent"),
            ({"content-type": "application/json"}, "not a CloudEvent"),
            (_headers(ce_specversion="0.3"), "specversion"),
            (_headers(ce_id=None), "ce-id"),
            (_headers(ce_type=None), "ce-type"),
            (_headers(ce_source=None), "ce-source"),
            (_headers(ce_organizationid=None), "ce-organizationid"),
            (_headers(ce_time=None), "ce-time"),
            (_headers(ce_time="yesterday"), "not a valid event"),
            (_headers(Content_Type="text/plain"), "content type"),
        ],
    )
    def test_bad_headers(self, headers: dict[str, str] | None, words: str) -> None:
        """Missing or wrong attributes raise EventDecodeError naming them."""
        with pytest.raises(EventDecodeError, match=words):
            decode(b"{}", headers)

    @pytest.mark.parametrize(
        ("body", "words"),
        [
            (b"[1, 2]", "data must be a mapping"),
            (b'"text"', "data must be a mapping"),
            (b"{not json", "does not decode"),
            (b"\xff\xfe", "does not decode"),
            (b'{"x": NaN}', "not a finite number"),
        ],
    )
    def test_bad_bodies(self, body: bytes, words: str) -> None:
        """A body that is not a JSON object of finite values is refused."""
        with pytest.raises(EventDecodeError, match=words):
            decode(body, _headers())

    def test_missing_time_uses_the_default(self) -> None:
        """Without ce-time, default_time (e.g. the broker's storage time) is used."""
        event = decode(b"{}", _headers(ce_time=None), default_time=WHEN)
        assert event.timestamp == WHEN

    def test_empty_body_is_empty_data(self) -> None:
        """An empty body (a CloudEvent without data) decodes to data {}."""
        assert decode(b"", _headers()).data == {}
        assert decode(b"  ", _headers()).data == {}

    def test_header_names_are_case_insensitive(self) -> None:
        """CE-ID, Ce-Type... are read like ce-id, ce-type."""
        headers = {k.upper(): v for k, v in _headers().items()}
        assert decode(b"{}", headers).id == "evt-1"

    def test_request_id_sources(self) -> None:
        """ce-requestid wins; X-Request-ID is read when it is absent."""
        assert request_id_from_headers(None) is None
        assert request_id_from_headers({"x-request-id": "x1"}) == "x1"
        assert request_id_from_headers({"ce-requestid": "c%201", "X-Request-ID": "x1"}) == "c 1"
        decoded = decode_message(b"{}", {**_headers(), "X-Request-ID": "legacy"})
        assert decoded.request_id == "legacy"

    def test_event_json_errors(self) -> None:
        """The fast JSON path names what is missing or wrong."""
        with pytest.raises(EventDecodeError, match="missing type"):
            event_from_json(b'{"source": "s", "organization_id": "o"}')
        with pytest.raises(EventDecodeError, match="must be an object"):
            event_from_json(b"[]")
        with pytest.raises(EventDecodeError, match="must be a string"):
            event_from_json(b'{"type": 1, "source": "s", "organization_id": "o"}')
        with pytest.raises(EventDecodeError, match="RFC 3339"):
            event_from_json(b'{"type": "t", "source": "s", "organization_id": "o", "timestamp": 5}')
        with pytest.raises(EventDecodeError, match="does not decode"):
            event_from_json(b"{")


class TestFastDecodePath:
    """Decoding skips Event's re-checks only when they cannot fail; the result is the same."""

    def test_fast_and_checked_construction_agree(self) -> None:
        """A decoded event equals one built by the checked constructor, field by field."""
        event = _event(data={"a": [1, {"b": None}], "c": "ü"})
        body, headers = encode(event)
        decoded = decode(body, headers)
        assert decoded == event
        assert type(decoded.data) is dict
        assert (
            Event(
                **{
                    f: getattr(decoded, f)
                    for f in ("type", "source", "organization_id", "data", "id", "timestamp")
                }
            )
            == decoded
        )

    def test_deep_nesting_takes_the_checked_path(self) -> None:
        """More than 64 nested containers: Event's own limit applies (a decode error)."""
        body = b'{"a":' * 70 + b"1" + b"}" * 70
        with pytest.raises(EventDecodeError, match="nested too deeply"):
            decode(body, _headers())

    def test_blank_attribute_takes_the_checked_path(self) -> None:
        """A blank (percent-encoded space) type is refused by Event's validator."""
        with pytest.raises(EventDecodeError, match="type must be a non-empty string"):
            decode(b"{}", _headers(ce_type="%20"))

    def test_default_time_in_another_zone_is_normalised(self) -> None:
        """A default_time with an offset comes out in UTC."""
        from datetime import timedelta, timezone

        local = datetime(2030, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
        event = decode(b"{}", _headers(ce_time=None), default_time=local)
        assert event.timestamp == local
        assert event.timestamp.tzinfo is UTC


class TestStructuredMode:
    """application/cloudevents+json messages are read too."""

    def _body(self, **fields: Any) -> bytes:
        doc: dict[str, Any] = {
            "specversion": "1.0",
            "id": "s-1",
            "type": "t",
            "source": "/s",
            "organizationid": "o",
            "time": "2030-01-02T03:04:05Z",
            "data": {"a": 1},
            "requestid": "r-1",
        }
        for key, value in fields.items():
            if value is None:
                doc.pop(key, None)
            else:
                doc[key] = value
        return json.dumps(doc).encode()

    def test_reads_a_structured_event(self) -> None:
        """All attributes and data come from the JSON document."""
        decoded = decode_message(
            self._body(), {"Content-Type": "application/cloudevents+json; charset=utf-8"}
        )
        assert decoded.event.id == "s-1"
        assert decoded.event.organization_id == "o"
        assert decoded.event.data == {"a": 1}
        assert decoded.request_id == "r-1"

    @pytest.mark.parametrize(
        ("fields", "words"),
        [
            ({"specversion": "0.3"}, "specversion"),
            ({"organizationid": None}, "missing organizationid"),
            ({"data_base64": "AAAA"}, "data_base64"),
            ({"datacontenttype": "text/plain"}, "content type"),
            ({"time": None}, "no time"),
        ],
    )
    def test_structured_errors(self, fields: dict[str, Any], words: str) -> None:
        """Bad structured documents are decode errors naming the problem."""
        with pytest.raises(EventDecodeError, match=words):
            decode(self._body(**fields), {"content-type": "application/cloudevents+json"})

    def test_structured_defaults(self) -> None:
        """No time uses default_time; null data is {}; a non-object is refused."""
        headers = {"content-type": "application/cloudevents+json"}
        event = decode(self._body(time=None, data=None), headers, default_time=WHEN)
        assert (event.timestamp, event.data) == (WHEN, {})
        with pytest.raises(EventDecodeError, match="not a JSON object"):
            decode(b"[]", headers)


class TestCloudEventsSdkInterop:
    """The cloudevents SDK (2.x, HTTP binding's ce- mapping) reads ours, we read its."""

    @settings(max_examples=60, deadline=None)
    @given(event=events(), rid=event_texts())
    def test_sdk_reads_what_we_encode(self, event: Event, rid: str) -> None:
        """from_binary_event on our headers/body yields the same attributes and data."""
        body, headers = encode(event, request_id=rid)
        ce = from_binary_event(HTTPMessage(headers=headers, body=body))
        assert ce.get_id() == event.id
        assert ce.get_type() == event.type
        assert ce.get_source() == event.source
        assert ce.get_time() == event.timestamp
        assert ce.get_extension("organizationid") == event.organization_id
        assert ce.get_extension("requestid") == rid
        assert ce.get_datacontenttype() == "application/json"
        assert (ce.get_data() or {}) == event.data

    @settings(max_examples=60, deadline=None)
    @given(
        id_=event_texts(),
        type_=event_texts(),
        source=event_texts(),
        org=event_texts(),
        data=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)),
    )
    def test_we_read_what_the_sdk_encodes(
        self, id_: str, type_: str, source: str, org: str, data: dict[str, Any]
    ) -> None:
        """decode on the SDK's binary-mode message gives the event it describes."""
        ce = CloudEvent(
            attributes={
                "id": id_,
                "type": type_,
                "source": source,
                "time": WHEN,
                "organizationid": org,
                "datacontenttype": "application/json",
            },
            data=data,
        )
        message = to_binary_event(ce)
        event = decode(message.body, message.headers)
        assert (event.id, event.type, event.source, event.organization_id) == (
            id_,
            type_,
            source,
            org,
        )
        assert event.timestamp == WHEN
        assert event.data == data


def test_codec_module_names_its_headers() -> None:
    """The header-name constants are the ones documented in the design."""
    assert event_codec.H_MSG_ID == "Nats-Msg-Id"
    assert event_codec.H_REQUEST_ID == "ce-requestid"
    assert event_codec.SPECVERSION == "1.0"
