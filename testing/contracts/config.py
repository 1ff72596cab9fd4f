"""The ConfigSource contract, run against every ConfigSource adapter.

Subclass :class:`ConfigContract` and provide a ``make_config`` fixture returning a
:class:`ConfigFactory`: ``make_config(values, prefix=..., defaults=...)`` builds a
source in which ``values`` (text, keyed by variable name) are what the process
environment (or its equivalent) holds, and ``defaults`` (keyed by setting name)
are the adapter's lowest layer::

    class TestInMemoryConfig(ConfigContract):
        @pytest.fixture
        def make_config(self) -> ConfigFactory:
            return lambda values, *, prefix=None, defaults=None: InMemoryConfig(
                values, prefix=prefix, defaults=defaults
            )
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain_errors import ConfigurationError
from ports.config import FALSE_WORDS, TRUE_WORDS, ConfigSource
from testing._strategies_config import (
    bool_texts,
    config_maps,
    float_texts,
    int_texts,
    key_spellings,
    non_int_texts,
    secret_texts,
    setting_names,
)

__all__ = ["ConfigContract", "ConfigFactory"]

# One contract class runs under a subclass per adapter: the same test is then called
# from different executors on purpose, and the factory fixture is meant to be reused.
_PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
)


class ConfigFactory(Protocol):
    """Builds the ConfigSource under test from text values."""

    def __call__(
        self,
        values: Mapping[str, str],
        *,
        prefix: str | None = None,
        defaults: Mapping[str, str] | None = None,
    ) -> ConfigSource: ...


class ConfigContract:
    """Contract of :class:`ports.config.ConfigSource`. Needs fixture ``make_config``."""

    # -- reading and key names ---------------------------------------------------

    def test_is_a_config_source(self, make_config: ConfigFactory) -> None:
        """The adapter implements the ConfigSource protocol."""
        assert isinstance(make_config({}), ConfigSource)

    def test_get_returns_the_raw_text(self, make_config: ConfigFactory) -> None:
        """get returns the stored text unchanged, surrounding spaces included."""
        config = make_config({"GREETING": "  hello world  "})
        assert config.get("GREETING") == "  hello world  "
        assert config.get_str("greeting") == "  hello world  "

    def test_get_of_a_missing_key_returns_the_default(self, make_config: ConfigFactory) -> None:
        """get returns None, or the default given, for a key set nowhere."""
        config = make_config({})
        assert config.get("NOPE") is None
        assert config.get("NOPE", "fallback") == "fallback"

    @pytest.mark.parametrize(
        "spelling", ["DATABASE_URL", "database_url", "database.url", "Database.Url", "database-url"]
    )
    def test_keys_are_case_insensitive_and_dot_is_underscore(
        self, make_config: ConfigFactory, spelling: str
    ) -> None:
        """database.url, DATABASE_URL and database_url name the same setting."""
        config = make_config({"DATABASE_URL": "postgresql://db"})
        assert config.get_str(spelling) == "postgresql://db"
        assert config.is_set(spelling)

    @_PROPERTY
    @given(data=st.data(), name=setting_names(), value=st.text(min_size=1, max_size=10))
    def test_every_spelling_reads_the_same_value(
        self, make_config: ConfigFactory, data: st.DataObject, name: str, value: str
    ) -> None:
        """Any mix of case and . _ - in the key written and the key read agrees."""
        written = data.draw(key_spellings(name), label="written")
        read = data.draw(key_spellings(name), label="read")
        config = make_config({written: value})
        assert config.get(read) == value

    def test_empty_text_is_a_value(self, make_config: ConfigFactory) -> None:
        """A key set to "" is set (get returns ""), and is not an int."""
        config = make_config({"EMPTY": ""})
        assert config.is_set("EMPTY")
        assert config.get("EMPTY", "default") == ""
        with pytest.raises(ConfigurationError, match="EMPTY"):
            config.get_int("EMPTY")

    # -- prefix -------------------------------------------------------------------

    @pytest.mark.parametrize("prefix", ["APP", "app", "APP_", "app."])
    def test_prefix_is_prepended(self, make_config: ConfigFactory, prefix: str) -> None:
        """With a prefix APP, key port is read from APP_PORT, and PORT alone is not seen."""
        config = make_config({"APP_PORT": "8080", "HOST": "unprefixed"}, prefix=prefix)
        assert config.get_int("port") == 8080
        assert config.get("host") is None
        assert not config.is_set("host")

    def test_missing_key_error_names_the_prefixed_variable(
        self, make_config: ConfigFactory
    ) -> None:
        """The error for a missing key names the variable to set, prefix included."""
        config = make_config({}, prefix="app")
        with pytest.raises(ConfigurationError, match="APP_DATABASE_URL"):
            config.get_str("database.url")

    # -- defaults -------------------------------------------------------------------

    def test_defaults_are_the_lowest_layer(self, make_config: ConfigFactory) -> None:
        """A default is read when nothing else sets the key, and loses to a value."""
        config = make_config(
            {"APP_PORT": "9000"}, prefix="APP", defaults={"port": "8080", "host": "localhost"}
        )
        assert config.get_int("port") == 9000
        assert config.get_str("host") == "localhost"

    def test_a_default_does_not_make_a_key_set(self, make_config: ConfigFactory) -> None:
        """is_set ignores defaults; validate accepts them."""
        config = make_config({}, defaults={"HOST": "localhost"})
        assert not config.is_set("host")
        config.validate(["host"])

    def test_getter_default_is_returned_when_missing(self, make_config: ConfigFactory) -> None:
        """Each typed getter returns its default for a missing key, unparsed."""
        config = make_config({})
        assert config.get_str("S", "x") == "x"
        assert config.get_int("I", 7) == 7
        assert config.get_float("F", 2.5) == 2.5
        assert config.get_bool("B", False) is False

    @pytest.mark.parametrize("getter", ["get_str", "get_int", "get_float", "get_bool"])
    def test_missing_without_default_names_the_key(
        self, make_config: ConfigFactory, getter: str
    ) -> None:
        """A missing key and no default is a ConfigurationError naming the key."""
        config = make_config({})
        with pytest.raises(ConfigurationError, match="SOME_SETTING") as info:
            getattr(config, getter)("some.setting")
        assert info.value.details["missing"] == ["SOME_SETTING"]

    # -- typed getters ----------------------------------------------------------------

    @pytest.mark.parametrize(
        ("text", "value"), [("42", 42), ("-7", -7), ("+3", 3), (" 8080 ", 8080), ("007", 7)]
    )
    def test_get_int(self, make_config: ConfigFactory, text: str, value: int) -> None:
        """Base-10 integers, with sign, zero padding or surrounding spaces."""
        assert make_config({"N": text}).get_int("n") == value

    @pytest.mark.parametrize(
        ("text", "value"), [("2.5", 2.5), ("-1e3", -1000.0), ("3", 3.0), (".5", 0.5)]
    )
    def test_get_float(self, make_config: ConfigFactory, text: str, value: float) -> None:
        """Decimal and exponent notation."""
        assert make_config({"X": text}).get_float("x") == value

    @pytest.mark.parametrize("word", sorted(TRUE_WORDS | FALSE_WORDS))
    def test_get_bool_accepts_every_word_in_any_case(
        self, make_config: ConfigFactory, word: str
    ) -> None:
        """true/false/1/0/yes/no/on/off (and y/n/t/f), lower, upper or mixed case."""
        expected = word in TRUE_WORDS
        for spelling in (word, word.upper(), word.capitalize()):
            assert make_config({"FLAG": spelling}).get_bool("flag") is expected

    @pytest.mark.parametrize(
        ("getter", "text", "type_name"),
        [
            ("get_int", "abc", "int"),
            ("get_int", "1.5", "int"),
            ("get_int", "1_000", "int"),
            ("get_float", "fast", "float"),
            ("get_bool", "maybe", "bool"),
            ("get_bool", "2", "bool"),
        ],
    )
    def test_malformed_value_names_key_and_type(
        self, make_config: ConfigFactory, getter: str, text: str, type_name: str
    ) -> None:
        """A malformed value is a ConfigurationError naming the key and expected type."""
        config = make_config({"SETTING": text})
        with pytest.raises(ConfigurationError) as info:
            getattr(config, getter)("setting")
        assert "SETTING" in str(info.value)
        assert type_name in str(info.value)
        assert info.value.details["expected"] == type_name

    @pytest.mark.parametrize("key", ["DB_PASSWORD", "API_TOKEN", "CLIENT_SECRET", "PORT"])
    def test_malformed_value_is_never_in_the_error(
        self, make_config: ConfigFactory, key: str
    ) -> None:
        """Neither the message, the details nor a chained exception carry the value."""
        value = "hunter2-s3cr3t-value"
        config = make_config({key: value})
        for getter in ("get_int", "get_float", "get_bool"):
            with pytest.raises(ConfigurationError) as info:
                getattr(config, getter)(key)
            error = info.value
            assert value not in str(error)
            assert value not in repr(error)
            assert value not in repr(dict(error.details))
            assert error.__cause__ is None
            assert error.__suppress_context__ or error.__context__ is None

    # -- validate -----------------------------------------------------------------------

    def test_validate_names_every_missing_key_at_once(self, make_config: ConfigFactory) -> None:
        """One error lists all missing keys, in the order asked, not only the first."""
        config = make_config({"PRESENT": "1"}, prefix=None)
        with pytest.raises(ConfigurationError) as info:
            config.validate(["database.url", "present", "nats_url", "SERVICE_NAME"])
        assert info.value.details["missing"] == ["DATABASE_URL", "NATS_URL", "SERVICE_NAME"]
        for name in ("DATABASE_URL", "NATS_URL", "SERVICE_NAME"):
            assert name in str(info.value)
        assert "PRESENT" not in str(info.value)

    def test_validate_passes_when_everything_is_set(self, make_config: ConfigFactory) -> None:
        """validate returns None when every key has a value."""
        config = make_config({"A": "1", "B_C": ""})
        config.validate(["a", "b.c"])  # raises if it finds anything missing
        config.validate([])

    # -- no side effects ------------------------------------------------------------------

    def test_reading_never_touches_os_environ(self, make_config: ConfigFactory) -> None:
        """Building and reading a config leaves os.environ exactly as it was."""
        before = dict(os.environ)
        config = make_config({"HEXINFRA_CONTRACT_PROBE": "1"}, defaults={"OTHER": "2"})
        config.get("HEXINFRA_CONTRACT_PROBE")
        config.validate(["hexinfra.contract.probe", "other"])
        assert dict(os.environ) == before

    # -- properties ---------------------------------------------------------------------------

    @_PROPERTY
    @given(pair=int_texts())
    def test_every_int_written_as_text_reads_back(
        self, make_config: ConfigFactory, pair: tuple[str, int]
    ) -> None:
        """An int written as text (sign, padding, spaces) reads back equal."""
        text, value = pair
        assert make_config({"N": text}).get_int("N") == value

    @_PROPERTY
    @given(pair=float_texts())
    def test_every_float_written_as_text_reads_back(
        self, make_config: ConfigFactory, pair: tuple[str, float]
    ) -> None:
        """A float written with repr or %e reads back equal (inf included)."""
        text, value = pair
        got = make_config({"X": text}).get_float("X")
        assert got == value or (math.isnan(got) and math.isnan(value))

    @_PROPERTY
    @given(pair=bool_texts())
    def test_every_bool_word_reads_back(
        self, make_config: ConfigFactory, pair: tuple[str, bool]
    ) -> None:
        """Every boolean word, in any case, reads back as its bool."""
        text, value = pair
        assert make_config({"FLAG": text}).get_bool("FLAG") is value

    @_PROPERTY
    @given(text=non_int_texts())
    def test_any_text_that_is_not_an_int_is_a_configuration_error(
        self, make_config: ConfigFactory, text: str
    ) -> None:
        """get_int of any non-integer text raises ConfigurationError, never ValueError."""
        config = make_config({"N": text})
        with pytest.raises(ConfigurationError, match="N"):
            config.get_int("N")

    @_PROPERTY
    @given(secret=secret_texts())
    def test_a_malformed_secret_never_reaches_the_error(
        self, make_config: ConfigFactory, secret: str
    ) -> None:
        """Whatever the secret, the error for it being malformed does not contain it."""
        # Delimited, so that a secret that happens to spell part of the key name or of
        # the fixed message text cannot make the check pass or fail by coincidence.
        value = f"<<{secret}>>"
        config = make_config({"DB_PASSWORD": value})
        with pytest.raises(ConfigurationError) as info:
            config.get_int("db.password")
        assert value not in str(info.value)
        assert value not in repr(dict(info.value.details))
        assert "<<" not in str(info.value)

    @_PROPERTY
    @given(values=config_maps(max_size=5))
    def test_a_map_reads_back_key_by_key(
        self, make_config: ConfigFactory, values: dict[str, str]
    ) -> None:
        """Every value of a map reads back unchanged, and validate accepts all its keys."""
        config = make_config(values)
        for key, value in values.items():
            assert config.get(key) == value
        config.validate(values)
