"""Properties of the Event value: JSON round trip and validation."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from domain_errors import BadRequest
from ports import Event

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
text = st.text(min_size=1, max_size=20).filter(str.strip)


@given(
    type_=text,
    source=text,
    org=text,
    data=st.dictionaries(st.text(max_size=10), json_value, max_size=5),
    ts=st.datetimes(timezones=st.timezones()),
)
def test_every_event_survives_json(
    type_: str, source: str, org: str, data: dict[str, Any], ts: Any
) -> None:
    """Every valid Event equals its own to_json/from_json round trip."""
    try:
        event = Event(type=type_, source=source, organization_id=org, data=data, timestamp=ts)
    except BadRequest:
        # Some generated zones have no offset at this instant (imaginary times).
        assert ts.utcoffset() is None
        return
    assert Event.from_json(event.to_json()) == event


@given(raw=st.binary(max_size=64) | st.text(max_size=64))
def test_arbitrary_input_is_an_event_or_bad_request(raw: bytes | str) -> None:
    """from_json on arbitrary input returns an Event or raises BadRequest, nothing else."""
    try:
        result = Event.from_json(raw)
    except BadRequest:
        return
    assert isinstance(result, Event)
