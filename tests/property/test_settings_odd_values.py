"""Every numeric setting, fed odd values one key at a time: a ConfigurationError naming
the key (never the value) or a working adapter; never another exception, never a hang.

Real mode points at unreachable servers and only builds (construction does no I/O);
memory mode builds the fakes. Issue 11, ADR 0025.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.bootstrap import Infrastructure, build_infrastructure
from adapters.memory import InMemoryConfig, InMemoryEventBus, SqliteDatabase
from domain_errors import ConfigurationError
from testing.fakes import RecordingLogger

#: Every numeric setting an adapter reads (the test below checks none is forgotten).
NUMERIC_KEYS = (
    "DB_POOL_MIN_SIZE",
    "DB_POOL_MAX_SIZE",
    "DB_POOL_MAX_LIFETIME_S",
    "DB_POOL_MAX_IDLE_S",
    "DB_POOL_TIMEOUT_S",
    "DB_CONNECT_RETRIES",
    "DB_CONNECT_BACKOFF_S",
    "DB_CONNECT_TIMEOUT_S",
    "DB_SLOW_QUERY_MS",
    "DB_STATEMENT_TIMEOUT_MS",
    "DB_HEALTH_TIMEOUT_S",
    "DB_PREPARE_THRESHOLD",
    "EVENTS_REPLICAS",
    "EVENTS_DUPLICATE_WINDOW_S",
    "EVENTS_MAX_AGE_S",
    "EVENTS_MAX_BYTES",
    "EVENTS_DEAD_MAX_AGE_S",
    "EVENTS_PUBLISH_RETRIES",
    "EVENTS_PUBLISH_TIMEOUT_S",
    "EVENTS_PUBLISH_BACKOFF_S",
    "EVENTS_PUBLISH_BACKOFF_MAX_S",
    "EVENTS_PUBLISH_WINDOW",
    "EVENTS_API_TIMEOUT_S",
    "EVENTS_PULL_EXPIRES_S",
    "EVENTS_MAX_ACK_PENDING",
    "EVENTS_MAX_PAYLOAD_BYTES",
    "EVENTS_OUTBOX_POLL_S",
    "EVENTS_OUTBOX_MAX_LAG_S",
    "NATS_CONNECT_RETRIES",
    "NATS_CONNECT_TIMEOUT_S",
    "NATS_CONNECT_BACKOFF_S",
    "NATS_RECONNECT_WAIT_S",
)

ODD_VALUES = (
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "-1",
    "-0",
    "0",
    "0.0",
    "-0.5",
    "1e308",
    "-1e308",
    str(10**30),
    str(-(10**30)),
    "9" * 5000,
    "1e-320",
    "",
    " ",
    "\t\n",
    "١٢",
    "\uff11\uff12",  # fullwidth digits
    "1_000",
    "0x10",
    "1e3",
    "1.5",
    " 7 ",
    "+5",
    "abc",
    "5s",
)

REAL = {"DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/db", "NATS_URL": "nats://127.0.0.1:1"}

values = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.floats().map(repr),
    st.integers().map(str),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.text(max_size=6),
)


def _build(extra: dict[str, str], key: str, value: str) -> Infrastructure:
    return build_infrastructure(InMemoryConfig({**extra, key: value}), logger=RecordingLogger())


def _assert_sane(infra: Infrastructure) -> None:
    """Every number the built adapters hold is finite (the adapter works with it)."""
    holders: list[Any] = []
    if isinstance(infra.database, SqliteDatabase):
        assert math.isfinite(infra.database.lock_timeout)
        assert infra.database.lock_timeout > 0
    else:
        holders.append(infra.database.settings)  # type: ignore[attr-defined]
    if isinstance(infra.publisher, InMemoryEventBus):
        assert infra.publisher.max_payload >= 1
    else:
        holders.append(infra.publisher._connection.settings)  # type: ignore[attr-defined]
    for holder in holders:
        for field in attrs.fields(type(holder)):
            number = getattr(holder, field.name)
            if isinstance(number, float):
                assert math.isfinite(number), field.name


def _check(extra: dict[str, str], key: str, value: str) -> None:
    try:
        infra = _build(extra, key, value)
    except ConfigurationError as error:
        message = str(error)
        assert key in message, (key, message)
        shown = value.strip()
        if len(shown) >= 5:  # short values ("0", "1") may be part of a range
            assert shown not in message, (key, message)
        return
    _assert_sane(infra)


class TestOddValues:
    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(key=st.sampled_from(NUMERIC_KEYS), value=values, real=st.booleans())
    def test_configuration_error_or_a_working_adapter(
        self, key: str, value: str, real: bool
    ) -> None:
        """Random odd values, one key at a time, in real mode (build only) or memory."""
        _check(REAL if real else {}, key, value)

    @pytest.mark.parametrize("key", NUMERIC_KEYS)
    def test_every_odd_value_of_every_key(self, key: str) -> None:
        """The whole list of odd values, on every key, in both modes."""
        for value in ODD_VALUES:
            _check(REAL, key, value)
            _check({}, key, value)

    @pytest.mark.parametrize("key", NUMERIC_KEYS)
    @pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", str(10**30)])
    def test_non_finite_and_huge_values_are_refused(self, key: str, value: str) -> None:
        """nan, infinities and absurd magnitudes are configuration errors naming the key
        and the expected range (in real mode every key is read)."""
        if key == "EVENTS_MAX_PAYLOAD_BYTES":
            pytest.skip("read by the in-memory bus only (NATS takes the server's limit)")
        if key == "DB_PREPARE_THRESHOLD" and value.startswith("-"):
            pytest.skip("negative means never prepare")
        with pytest.raises(ConfigurationError) as info:
            _build(REAL, key, value)
        assert info.value.details["key"] == key
        assert re.search(r"must (be|not)|expected", str(info.value))

    @pytest.mark.parametrize(
        "key", ["DB_POOL_TIMEOUT_S", "EVENTS_DUPLICATE_WINDOW_S", "EVENTS_MAX_PAYLOAD_BYTES"]
    )
    @pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e308", str(10**30)])
    def test_memory_mode_refuses_them_too(self, key: str, value: str) -> None:
        """The settings the fakes read are checked by the same rules."""
        with pytest.raises(ConfigurationError) as info:
            _build({}, key, value)
        assert info.value.details["key"] == key

    def test_a_key_name_is_never_mistaken_for_a_secret_value(self) -> None:
        """A secret-looking odd value (a token pasted into the wrong key) is not echoed."""
        token = "tok_LIVE_4f9a8b7c6d"
        for key in NUMERIC_KEYS:
            real = key != "EVENTS_MAX_PAYLOAD_BYTES"  # read by the in-memory bus only
            with pytest.raises(ConfigurationError) as info:
                _build(REAL if real else {}, key, token)
            assert token not in str(info.value)
            assert token not in repr(info.value.details)


def test_every_numeric_setting_read_by_an_adapter_is_covered() -> None:
    """No adapter reads a number that this test does not feed odd values."""
    root = Path(__file__).resolve().parents[2] / "adapters"
    pattern = re.compile(r"get_(?:int|float)\(\s*\"([A-Z0-9_]+)\"")
    read = {m for path in root.rglob("*.py") for m in pattern.findall(path.read_text())}
    assert read, "the pattern found nothing: update it"
    assert read <= set(NUMERIC_KEYS), sorted(read - set(NUMERIC_KEYS))
