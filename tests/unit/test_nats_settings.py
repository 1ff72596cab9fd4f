"""NatsSettings for many services on one NATS: the dead-letter prefix derived from the
stream's prefix, retention limits, and the consumer's name on the server."""

from __future__ import annotations

import re

import pytest

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsSettings
from adapters.nats_events.settings import CONSUMER_NAME_MAX
from domain_errors import ConfigurationError

_NATS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _settings(**values: str) -> NatsSettings:
    return NatsSettings.from_config(InMemoryConfig({"NATS_URL": "nats://x:1", **values}))


class TestDeadPrefix:
    """EVENTS_DEAD_PREFIX defaults to dead.<EVENTS_PREFIX>."""

    def test_default_follows_the_prefix(self) -> None:
        """Unset, the dead prefix is dead.<prefix>, for the default prefix too."""
        assert _settings().dead_prefix == "dead.events"
        assert _settings(EVENTS_PREFIX="billing.v1").dead_prefix == "dead.billing.v1"
        assert NatsSettings(url="nats://x:1", prefix="orders").dead_prefix == "dead.orders"

    def test_two_services_never_share_a_dead_prefix(self) -> None:
        """Services with their own prefixes get dead prefixes that do not overlap."""
        a, b = _settings(EVENTS_PREFIX="orders"), _settings(EVENTS_PREFIX="billing")
        assert not a.dead_prefix.startswith(b.dead_prefix + ".")
        assert not b.dead_prefix.startswith(a.dead_prefix + ".")
        assert a.dead_prefix != b.dead_prefix

    def test_explicit_value_wins(self) -> None:
        """A set EVENTS_DEAD_PREFIX is used as it is."""
        assert _settings(EVENTS_DEAD_PREFIX="graveyard").dead_prefix == "graveyard"

    @pytest.mark.parametrize(
        ("prefix", "dead"),
        [
            ("events", "events"),
            ("events", "events.dead"),
            ("dead.events", "dead"),
            ("dead", "dead.dead.x"),
        ],
    )
    def test_overlapping_prefixes_are_refused(self, prefix: str, dead: str) -> None:
        """A dead prefix equal to, inside or holding the prefix -> ConfigurationError."""
        with pytest.raises(ConfigurationError, match="EVENTS_DEAD_PREFIX"):
            _settings(EVENTS_PREFIX=prefix, EVENTS_DEAD_PREFIX=dead)

    def test_prefix_dead_gets_a_distinct_default(self) -> None:
        """EVENTS_PREFIX=dead overlaps its default dead.dead: refused, naming the key."""
        with pytest.raises(ConfigurationError, match="EVENTS_DEAD_PREFIX"):
            _settings(EVENTS_PREFIX="dead")

    def test_similar_names_do_not_overlap(self) -> None:
        """Prefixes sharing leading characters but not a token are accepted."""
        assert _settings(EVENTS_PREFIX="events", EVENTS_DEAD_PREFIX="eventsdead").dead_prefix


class TestRetention:
    """EVENTS_MAX_AGE_S, EVENTS_MAX_BYTES, EVENTS_DEAD_MAX_AGE_S."""

    def test_defaults(self) -> None:
        """Seven days for events, no byte limit, no age limit for dead letters."""
        s = _settings()
        assert (s.max_age, s.max_bytes, s.dead_max_age) == (604800.0, -1, 0.0)

    def test_values_are_read(self) -> None:
        """Set keys become the fields."""
        s = _settings(
            EVENTS_MAX_AGE_S="3600", EVENTS_MAX_BYTES="1048576", EVENTS_DEAD_MAX_AGE_S="86400"
        )
        assert (s.max_age, s.max_bytes, s.dead_max_age) == (3600.0, 1048576, 86400.0)

    def test_zero_age_means_no_limit(self) -> None:
        """0 is accepted for both ages (JetStream: no limit)."""
        s = _settings(EVENTS_MAX_AGE_S="0", EVENTS_DEAD_MAX_AGE_S="0")
        assert (s.max_age, s.dead_max_age) == (0.0, 0.0)

    @pytest.mark.parametrize("key", ["EVENTS_MAX_AGE_S", "EVENTS_DEAD_MAX_AGE_S"])
    @pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e400", "0.05"])
    def test_bad_ages_are_refused(self, key: str, value: str) -> None:
        """nan, infinities, negatives and ages under 100 ms -> ConfigurationError naming
        the key."""
        with pytest.raises(ConfigurationError, match=key) as caught:
            _settings(**{key: value})
        assert caught.value.details["key"] == key

    @pytest.mark.parametrize("value", ["0", "-2", "-100"])
    def test_bad_max_bytes_are_refused(self, value: str) -> None:
        """EVENTS_MAX_BYTES is -1 or positive; anything else names the key."""
        with pytest.raises(ConfigurationError, match="EVENTS_MAX_BYTES"):
            _settings(EVENTS_MAX_BYTES=value)

    def test_max_bytes_not_an_integer(self) -> None:
        """A non-integer EVENTS_MAX_BYTES is refused naming the key."""
        with pytest.raises(ConfigurationError, match="EVENTS_MAX_BYTES"):
            _settings(EVENTS_MAX_BYTES="1.5")

    @pytest.mark.parametrize("key", ["EVENTS_MAX_AGE_S", "EVENTS_DEAD_MAX_AGE_S"])
    def test_window_longer_than_the_age_is_refused(self, key: str) -> None:
        """A duplicate window longer than a stream's max age (JetStream refuses it) ->
        ConfigurationError naming both keys."""
        with pytest.raises(ConfigurationError, match=f"EVENTS_DUPLICATE_WINDOW_S.*{key}"):
            _settings(**{key: "60", "EVENTS_DUPLICATE_WINDOW_S": "120"})

    @pytest.mark.parametrize(
        "key",
        ["EVENTS_DUPLICATE_WINDOW_S", "EVENTS_PUBLISH_TIMEOUT_S", "NATS_CONNECT_BACKOFF_S"],
    )
    @pytest.mark.parametrize("value", ["nan", "inf"])
    def test_other_durations_refuse_nan_and_inf(self, key: str, value: str) -> None:
        """Every duration refuses nan and infinities, naming its key."""
        with pytest.raises(ConfigurationError, match=key):
            _settings(**{key: value})


class TestRanges:
    """Every number is finite and in range (ADR 0025), named by key, never by value."""

    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("NATS_RECONNECT_WAIT_S", "inf", "a finite number > 0 and <= 60"),
            ("NATS_CONNECT_TIMEOUT_S", "1e308", "a finite number > 0 and <= 3600"),
            ("NATS_CONNECT_RETRIES", "0", "an integer from 1 to 100"),
            ("EVENTS_REPLICAS", "6", "an integer from 1 to 5"),
            ("EVENTS_PUBLISH_RETRIES", "-1", "an integer from 0 to 100"),
            ("EVENTS_PUBLISH_WINDOW", str(10**30), "an integer from 1 to 1000000"),
            ("EVENTS_MAX_ACK_PENDING", "0", "an integer from 1 to 10000000"),
            ("EVENTS_PULL_EXPIRES_S", "7200", "a finite number from 0.5 to 3600"),
            ("EVENTS_DUPLICATE_WINDOW_S", "1e9", "a finite number > 0 and <= 604800"),
            ("EVENTS_MAX_AGE_S", "1e12", "0 (no limit) or a finite number from 0.1 to"),
            ("EVENTS_MAX_BYTES", str(2**63), "-1 (no limit) or an integer from 1 to"),
        ],
    )
    def test_out_of_range(self, key: str, value: str, expected: str) -> None:
        """The key and the accepted range are named; the value is not."""
        with pytest.raises(ConfigurationError) as caught:
            _settings(**{key: value})
        assert caught.value.details["key"] == key
        assert expected in str(caught.value)
        if len(value) >= 3:  # shorter ones may be part of the range
            assert value not in str(caught.value)

    def test_window_longer_than_the_age_names_no_values(self) -> None:
        """The window-versus-age refusal names both keys and neither number."""
        with pytest.raises(ConfigurationError) as caught:
            _settings(EVENTS_MAX_AGE_S="61", EVENTS_DUPLICATE_WINDOW_S="123")
        assert "61" not in str(caught.value)
        assert "123" not in str(caught.value)


class TestConsumerName:
    """NatsSettings.service and consumer_name(durable)."""

    def test_service_from_service_name(self) -> None:
        """SERVICE_NAME sets service (and the client's connection name); default hexinfra."""
        assert (_settings().service, _settings().name) == ("hexinfra", "hexinfra")
        s = _settings(SERVICE_NAME="orders")
        assert (s.service, s.name) == ("orders", "orders")
        assert _settings(SERVICE_NAME="").service == "hexinfra"

    def test_service_and_durable(self) -> None:
        """The name is <service>-<durable>."""
        assert _settings(SERVICE_NAME="orders").consumer_name("projection") == ("orders-projection")
        assert _settings().consumer_name("projection") == "hexinfra-projection"

    def test_same_durable_in_two_services_differs(self) -> None:
        """Two services naming their group alike get two consumers."""
        a = _settings(SERVICE_NAME="orders").consumer_name("projection")
        b = _settings(SERVICE_NAME="billing").consumer_name("projection")
        assert a != b

    @pytest.mark.parametrize(
        ("service", "durable", "expected"),
        [
            ("orders.api", "projection", "orders_api-projection"),
            ("orders", "a.b*c>d", "orders-a_b_c_d"),
            ("my service", "read model\t1", "my_service-read_model_1"),
            ("orders", "café/ü\\x", "orders-caf____x"),
            ("orders", "keep_these-ok9", "orders-keep_these-ok9"),
        ],
    )
    def test_characters_nats_refuses_become_underscores(
        self, service: str, durable: str, expected: str
    ) -> None:
        """`.`, `*`, `>`, whitespace and anything outside [A-Za-z0-9_-] become `_`."""
        name = NatsSettings(url="nats://x:1", service=service).consumer_name(durable)
        assert name == expected
        assert _NATS_NAME.match(name)

    def test_long_names_are_capped_and_stay_distinct(self) -> None:
        """A name over the cap is cut to it, ending with a hash of the whole name."""
        s = _settings(SERVICE_NAME="svc")
        a, b = s.consumer_name("x" * 300 + "a"), s.consumer_name("x" * 300 + "b")
        assert len(a) == len(b) == CONSUMER_NAME_MAX
        assert a != b
        assert _NATS_NAME.match(a)
        assert s.consumer_name("x" * 300 + "a") == a
        exact = "y" * (CONSUMER_NAME_MAX - len("svc-"))
        assert s.consumer_name(exact) == f"svc-{exact}"
