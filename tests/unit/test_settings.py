"""load_settings (attrs + cattrs), Secret, and InMemoryConfig's own conveniences."""

from __future__ import annotations

import enum
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Literal

import attrs
import pytest

from adapters.env_config import CONFIG_KEY, EnvConfig, Secret, load_settings
from adapters.memory import InMemoryConfig
from domain_errors import ConfigurationError


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


@attrs.frozen
class DbSettings:
    url: Secret = attrs.field(metadata={CONFIG_KEY: "database.url"})
    pool_min_size: int = 5
    pool_max_size: int = 25
    max_lifetime: timedelta = timedelta(seconds=300)
    statement_timeout_ms: int | None = None
    echo: bool = False
    mode: Mode = Mode.SAFE
    fmt: Literal["json", "console"] = "json"
    hosts: tuple[str, ...] = ()
    ports: list[int] = attrs.Factory(list)
    data_dir: Path = Path("/var/lib/app")
    ratio: float = 1.0


class TestLoadSettings:
    def test_reads_each_field_under_the_prefix(self) -> None:
        """Each field reads <prefix>_<FIELD>; CONFIG_KEY names a key explicitly."""
        config = InMemoryConfig(
            {
                "DATABASE_URL": "postgresql://u:pw@db/app",
                "DB_POOL_MIN_SIZE": "2",
                "DB_MAX_LIFETIME": "1.5",
                "DB_STATEMENT_TIMEOUT_MS": "250",
                "DB_ECHO": "yes",
                "DB_MODE": "fast",
                "DB_FMT": "console",
                "DB_HOSTS": "a, b,c",
                "DB_PORTS": "1,2",
                "DB_DATA_DIR": "/tmp/x",
                "DB_RATIO": "0.25",
            }
        )
        settings = load_settings(DbSettings, config, prefix="db")
        assert settings.url.reveal() == "postgresql://u:pw@db/app"
        assert (settings.pool_min_size, settings.pool_max_size) == (2, 25)
        assert settings.max_lifetime == timedelta(seconds=1.5)
        assert settings.statement_timeout_ms == 250
        assert settings.echo is True
        assert (settings.mode, settings.fmt) == (Mode.FAST, "console")
        assert (settings.hosts, settings.ports) == (("a", "b", "c"), [1, 2])
        assert (settings.data_dir, settings.ratio) == (Path("/tmp/x"), 0.25)

    def test_defaults_and_optional_fields(self) -> None:
        """Unset fields take their attrs default; an unset X | None field is None."""
        settings = load_settings(DbSettings, InMemoryConfig({"DATABASE_URL": "x"}), "db")
        assert settings == DbSettings(url=Secret("x"))
        assert settings.statement_timeout_ms is None

    def test_optional_field_without_default_is_none_when_unset(self) -> None:
        """A field typed X | None without a default is None when unset, parsed when set."""

        @attrs.frozen
        class Limits:
            cap: int | None

        assert load_settings(Limits, InMemoryConfig({})).cap is None
        assert load_settings(Limits, InMemoryConfig({"CAP": "3"})).cap == 3

    def test_a_malformed_optional_field_names_the_inner_type(self) -> None:
        """An X | None field with a bad value says what X expects."""
        config = InMemoryConfig({"DATABASE_URL": "x", "DB_STATEMENT_TIMEOUT_MS": "soon"})
        with pytest.raises(ConfigurationError, match="DB_STATEMENT_TIMEOUT_MS must be a base-10"):
            load_settings(DbSettings, config, prefix="db")

    def test_empty_list_setting(self) -> None:
        """An empty comma-separated value is an empty list."""
        settings = load_settings(
            DbSettings, InMemoryConfig({"DATABASE_URL": "x", "DB_HOSTS": ""}), "db"
        )
        assert settings.hosts == ()

    def test_every_missing_and_malformed_field_in_one_error(self) -> None:
        """One ConfigurationError names every missing variable and every bad one with its type."""
        config = InMemoryConfig(
            {
                "DB_POOL_MIN_SIZE": "many",
                "DB_ECHO": "perhaps",
                "DB_MODE": "turbo",
                "DB_FMT": "xml",
                "DB_MAX_LIFETIME": "soon",
                "DB_PORTS": "1,x",
                "DB_RATIO": "half",
            }
        )
        with pytest.raises(ConfigurationError) as info:
            load_settings(DbSettings, config, prefix="db")
        error = info.value
        assert error.details["missing"] == ["DATABASE_URL"]
        assert set(error.details["invalid"]) == {
            "DB_POOL_MIN_SIZE",
            "DB_ECHO",
            "DB_MODE",
            "DB_FMT",
            "DB_MAX_LIFETIME",
            "DB_PORTS",
            "DB_RATIO",
        }
        message = str(error)
        assert "DATABASE_URL" in message
        assert "DB_POOL_MIN_SIZE must be a base-10 integer" in message
        assert "DB_MODE must be one of fast, safe" in message
        assert "DB_FMT must be one of json, console" in message
        assert "DB_MAX_LIFETIME must be a duration in seconds" in message
        for value in ("many", "perhaps", "turbo", "xml", "soon", "half"):
            assert value not in message
        assert error.__cause__ is None
        assert error.__suppress_context__

    def test_a_malformed_secret_value_is_not_shown(self) -> None:
        """A bad value in a secret-looking field never reaches the error."""

        @attrs.frozen
        class Auth:
            token_ttl: int

        with pytest.raises(ConfigurationError) as info:
            load_settings(Auth, InMemoryConfig({"AUTH_TOKEN_TTL": "tk-live-123"}), "auth")
        assert "tk-live-123" not in str(info.value)
        assert "AUTH_TOKEN_TTL" in str(info.value)

    def test_works_with_env_config_and_its_prefix(self, tmp_path: Path) -> None:
        """Through EnvConfig the names in errors carry the config's own prefix."""

        @attrs.frozen
        class Svc:
            name: str
            port: int

        env = tmp_path / ".env"
        env.write_text("APP_SVC_NAME=orders\nAPP_SVC_PORT=http\n", encoding="utf-8")
        with pytest.raises(ConfigurationError, match="APP_SVC_PORT must be"):
            load_settings(Svc, EnvConfig(prefix="app", env_file=env, environ={}), prefix="svc")

    def test_only_attrs_classes(self) -> None:
        """A class that is not attrs is a TypeError (a programming error)."""

        class Plain:
            pass

        with pytest.raises(TypeError, match="attrs class"):
            load_settings(Plain, InMemoryConfig({}))

    def test_a_duration_that_overflows_is_malformed(self) -> None:
        """1e300 seconds is no timedelta: reported like any malformed value."""
        with pytest.raises(ConfigurationError, match="DB_MAX_LIFETIME"):
            load_settings(
                DbSettings, InMemoryConfig({"DATABASE_URL": "x", "DB_MAX_LIFETIME": "1e300"}), "db"
            )


class TestSecret:
    def test_never_shows_its_value(self) -> None:
        """repr, str, format and f-strings give ***; reveal() gives the value."""
        secret = Secret("hunter2")
        shown = [
            repr(secret),
            str(secret),
            f"{secret}",
            f"{secret!r}",
            f"{secret:>20}",
            repr([secret]),
        ]
        assert all("hunter2" not in text for text in shown)
        assert str(secret) == "***"
        assert secret.reveal() == "hunter2"

    def test_equality_hash_truth_and_pickle(self) -> None:
        """Secrets compare by value, hash consistently, are falsy when empty, and pickle."""
        assert Secret("a") == Secret("a")
        assert Secret("a") != Secret("b")
        assert Secret("a") != "a"
        assert hash(Secret("a")) == hash(Secret("a"))
        assert not Secret("")
        assert Secret(Secret("a")) == Secret("a")
        assert pickle.loads(pickle.dumps(Secret("a"))).reveal() == "a"

    def test_settings_repr_hides_secrets(self) -> None:
        """A settings object holding a Secret does not show it in its repr."""
        settings = DbSettings(url=Secret("postgresql://u:pw@h/db"))
        assert "pw" not in repr(settings)


class TestInMemoryConfig:
    def test_typed_values_are_stored_as_text(self) -> None:
        """True -> "true", 3 -> "3", 0.1 -> "0.1"; typed getters read them back."""
        config = InMemoryConfig({"FLAG": True, "N": 3, "R": 0.1, "S": "x"})
        assert (config.get("FLAG"), config.get("N"), config.get("R")) == ("true", "3", "0.1")
        assert (config.get_bool("flag"), config.get_int("n"), config.get_float("r")) == (
            True,
            3,
            0.1,
        )

    def test_rejects_values_of_other_types(self) -> None:
        """A list (or None) as a value is a TypeError naming the key."""
        with pytest.raises(TypeError, match="HOSTS"):
            InMemoryConfig({"HOSTS": ["a"]})  # type: ignore[dict-item]

    def test_copies_the_mapping(self) -> None:
        """Changing the caller's dict afterwards changes nothing."""
        values: dict[str, str | int | float | bool] = {"A": "1"}
        config = InMemoryConfig(values)
        values["A"] = "2"
        values["B"] = "3"
        assert (config.get("A"), config.get("B")) == ("1", None)

    def test_with_values_returns_a_new_config(self) -> None:
        """with_values adds to a copy; the original and its defaults are kept."""
        config = InMemoryConfig({"A": "1"}, prefix="app", defaults={"d": "x"})
        other = config.with_values(APP_B=2)
        assert other.get_int("b") == 2
        assert other.get("a") is None  # "A" is not under the prefix
        assert other.get("d") == "x"
        assert config.get("b") is None

    def test_two_spellings_canonical_wins(self) -> None:
        """Given log.level and LOG_LEVEL, the canonical LOG_LEVEL wins whatever the order."""
        assert (
            InMemoryConfig({"LOG_LEVEL": "debug", "log.level": "error"}).get("log_level") == "debug"
        )
        assert (
            InMemoryConfig({"log.level": "error", "LOG_LEVEL": "debug"}).get("log_level") == "debug"
        )

    def test_repr_lists_keys_not_values(self) -> None:
        """repr shows key names only."""
        text = repr(InMemoryConfig({"DB_PASSWORD": "pw-123"}))
        assert "DB_PASSWORD" in text
        assert "pw-123" not in text
