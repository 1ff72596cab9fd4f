"""PostgresDatabase pieces that need no server: settings, redaction, error mapping."""

from __future__ import annotations

import re

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import errors as pg_errors
from psycopg_pool import PoolClosed, PoolTimeout

from adapters.memory import InMemoryConfig
from adapters.postgres import PostgresDatabase, PostgresSettings, _map_error, redact_url
from domain_errors import (
    ConfigurationError,
    Conflict,
    DomainError,
    InternalServerError,
    ServiceUnavailable,
)
from ports.database import Database
from testing.fakes import RecordingLogger

URL = "postgresql://app:pw@db.internal:5433/orders"


class TestSettings:
    """PostgresSettings: defaults, validation, repr."""

    def test_defaults_follow_the_design(self):
        """Pool 5..25, lifetime 300 s, 5 connect retries, slow query 500 ms, no timeout."""
        s = PostgresSettings(url=URL)
        assert (s.pool_min_size, s.pool_max_size, s.max_lifetime) == (5, 25, 300.0)
        assert (s.connect_retries, s.slow_query_ms, s.statement_timeout_ms) == (5, 500, None)
        assert s.pool_check == "fast"

    @pytest.mark.parametrize(
        "bad",
        [
            {"pool_min_size": 10, "pool_max_size": 5},
            {"pool_min_size": -1},
            {"pool_max_size": 0},
            {"pool_timeout": 0},
            {"pool_check": "sometimes"},
            {"statement_timeout_ms": 0},
            {"url": "  "},
        ],
    )
    def test_invalid_values_are_configuration_errors(self, bad: dict[str, object]):
        """Out-of-range or unknown values raise ConfigurationError naming the field."""
        options = {"url": URL, **bad}
        with pytest.raises(ConfigurationError):
            PostgresSettings(**options)  # type: ignore[arg-type]

    def test_repr_hides_the_password(self):
        """The settings' repr shows the URL with its password masked."""
        text = repr(PostgresSettings(url=URL))
        assert "pw@" not in text
        assert "app:[REDACTED]@db.internal" in text

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://app:p@ssSECRET@127.0.0.1:1/db",  # libpq: host "ssSECRET@127.0.0.1"
            "postgresql://app:ab/cdSECRET@127.0.0.1:1/db",  # port "ab", dbname "cdSECRET@..."
            "postgresql://app:SECRET@127.0.0.1:1/db?sslpassword=SECRET",
            "host=127.0.0.1 port=1 password='a bSECRET' dbname=db",
        ],
    )
    async def test_a_password_with_at_or_slash_never_shows(self, url: str) -> None:
        """Settings and database reprs, the retry log lines and the connect error (its
        chained driver error included) hide a password holding '@' or '/'."""
        settings = PostgresSettings(
            url=url, connect_retries=2, connect_backoff=0.01, connect_timeout=1
        )
        logger = RecordingLogger()
        db = PostgresDatabase(settings, logger)
        assert "SECRET" not in repr(settings)
        assert "SECRET" not in repr(db)
        with pytest.raises(ServiceUnavailable) as caught:
            await db.connect()
        logger.error("start failed", exc=caught.value)
        lines = [r.to_dict() for r in logger.records]
        assert any(r["message"] == "database not reachable, retrying" for r in lines)
        assert "SECRET" not in repr(lines)
        assert "SECRET" not in str(caught.value)
        assert "SECRET" not in str(caught.value.__cause__)


class TestRedactUrl:
    """redact_url (the one redaction, adapters.redaction.redact_text) masks passwords in
    URLs and key=value strings."""

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("postgresql://u:secret@h/db", "postgresql://u:[REDACTED]@h/db"),
            ("postgresql://u:se@c/ret@h/db", "postgresql://u:[REDACTED]@h/db"),
            ("postgresql://u@h/db", "postgresql://[REDACTED]@h/db"),  # read as a token
            ("postgresql://h/db?password=secret&x=1", "postgresql://h/db?password=[REDACTED]&x=1"),
            ("host=h password=secret user=u", "host=h password=[REDACTED] user=u"),
            ("host=h password='se cret' user=u", "host=h password='[REDACTED]' user=u"),
        ],
    )
    def test_examples(self, url: str, expected: str):
        """Each form keeps everything but the password."""
        assert redact_url(url) == expected

    @settings(max_examples=50)
    @given(password=st.text(alphabet="abcdefXYZ0123456789!$^*()_+-=", min_size=4, max_size=20))
    def test_password_never_survives(self, password: str):
        """Whatever the password, it is not in the redacted URL."""
        url = f"postgresql://user:{password}@host:5432/db"
        assert f":{password}@" not in redact_url(url)


class TestFromConfig:
    """from_config reads every DB_* key through the ConfigSource port."""

    def test_every_key(self):
        """Each documented key lands in the matching setting."""
        config = InMemoryConfig(
            {
                "DATABASE_URL": URL,
                "DB_POOL_MIN_SIZE": 2,
                "DB_POOL_MAX_SIZE": 7,
                "DB_POOL_MAX_LIFETIME_S": 60,
                "DB_POOL_MAX_IDLE_S": 30,
                "DB_POOL_TIMEOUT_S": 1.5,
                "DB_POOL_CHECK": "Query",
                "DB_CONNECT_RETRIES": 3,
                "DB_CONNECT_BACKOFF_S": 0.1,
                "DB_CONNECT_TIMEOUT_S": 2,
                "DB_SLOW_QUERY_MS": 250,
                "DB_STATEMENT_TIMEOUT_MS": 1000,
                "DB_HEALTH_TIMEOUT_S": 0.5,
                "DB_PREPARE_THRESHOLD": -1,
                "DB_APPLICATION_NAME": "billing",
            }
        )
        s = PostgresSettings.from_config(config)
        assert s == PostgresSettings(
            url=URL,
            pool_min_size=2,
            pool_max_size=7,
            max_lifetime=60.0,
            max_idle=30.0,
            pool_timeout=1.5,
            pool_check="query",
            connect_retries=3,
            connect_backoff=0.1,
            connect_timeout=2.0,
            slow_query_ms=250,
            statement_timeout_ms=1000,
            health_timeout=0.5,
            prepare_threshold=None,
            application_name="billing",
        )

    def test_application_name_falls_back_to_the_service_name(self):
        """Without DB_APPLICATION_NAME, SERVICE_NAME names the connections."""
        s = PostgresSettings.from_config(InMemoryConfig({"DATABASE_URL": URL, "SERVICE_NAME": "x"}))
        assert s.application_name == "x"
        assert PostgresSettings.from_config(
            InMemoryConfig({"DATABASE_URL": URL})
        ).application_name == ("hexinfra")

    def test_missing_url_names_the_key(self):
        """No DATABASE_URL: ConfigurationError naming it."""
        with pytest.raises(ConfigurationError, match="DATABASE_URL"):
            PostgresSettings.from_config(InMemoryConfig({}))

    def test_unknown_pool_check_names_the_key(self):
        """An unknown DB_POOL_CHECK is rejected naming the key."""
        config = InMemoryConfig({"DATABASE_URL": URL, "DB_POOL_CHECK": "maybe"})
        with pytest.raises(ConfigurationError, match="DB_POOL_CHECK"):
            PostgresSettings.from_config(config)

    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("DB_CONNECT_TIMEOUT_S", "inf", "a finite number > 0 and <= 3600"),
            ("DB_CONNECT_TIMEOUT_S", "nan", "a finite number > 0 and <= 3600"),
            ("DB_CONNECT_TIMEOUT_S", "1e308", "a finite number > 0 and <= 3600"),
            ("DB_POOL_TIMEOUT_S", "inf", "a finite number > 0 and <= 3600"),
            ("DB_POOL_MAX_LIFETIME_S", "-300", "a finite number > 0 and <= 86400"),
            ("DB_POOL_MAX_SIZE", "1001", "an integer from 1 to 1000"),
            ("DB_CONNECT_RETRIES", "0", "an integer from 1 to 100"),
            ("DB_CONNECT_BACKOFF_S", "600", "a finite number from 0 to 60"),
            ("DB_SLOW_QUERY_MS", str(10**30), "an integer from 0 to 3600000"),
            ("DB_STATEMENT_TIMEOUT_MS", "-250", "0 (no limit) or an integer from 1 to 86400000"),
            ("DB_PREPARE_THRESHOLD", "9999999", "negative (never prepare) or an integer"),
        ],
    )
    def test_numbers_out_of_range_name_the_key_and_the_range(
        self, key: str, value: str, expected: str
    ) -> None:
        """nan, infinities, huge and out-of-range numbers: ConfigurationError naming the
        key and the range, never the value (ADR 0025)."""
        config = InMemoryConfig({"DATABASE_URL": URL, key: value})
        with pytest.raises(ConfigurationError) as info:
            PostgresSettings.from_config(config)
        assert info.value.details["key"] == key
        assert expected in info.value.details["expected"]
        assert re.match(rf"setting {key}( \(\w+\))? must be {re.escape(expected)}", str(info.value))
        if len(value) >= 3:  # shorter ones may be part of the range
            assert value not in str(info.value)

    def test_pool_min_above_max_names_both_keys(self) -> None:
        """DB_POOL_MIN_SIZE > DB_POOL_MAX_SIZE is refused naming both keys."""
        config = InMemoryConfig({"DATABASE_URL": URL, "DB_POOL_MIN_SIZE": 9, "DB_POOL_MAX_SIZE": 8})
        with pytest.raises(ConfigurationError, match=r"DB_POOL_MIN_SIZE.*DB_POOL_MAX_SIZE"):
            PostgresSettings.from_config(config)

    def test_the_largest_values_in_range_are_accepted(self) -> None:
        """The caps themselves are valid, and 0 statement timeout means no limit."""
        s = PostgresSettings.from_config(
            InMemoryConfig(
                {
                    "DATABASE_URL": URL,
                    "DB_POOL_MIN_SIZE": 1000,
                    "DB_POOL_MAX_SIZE": 1000,
                    "DB_CONNECT_TIMEOUT_S": 3600,
                    "DB_POOL_MAX_LIFETIME_S": 86400,
                    "DB_CONNECT_RETRIES": 100,
                    "DB_STATEMENT_TIMEOUT_MS": 0,
                    "DB_PREPARE_THRESHOLD": -(10**30),
                }
            )
        )
        assert (s.pool_max_size, s.connect_timeout, s.statement_timeout_ms) == (1000, 3600.0, None)
        assert s.prepare_threshold is None

    def test_database_from_config_does_no_io(self):
        """from_config builds an unconnected database that satisfies the port."""
        db = PostgresDatabase.from_config(
            InMemoryConfig({"DATABASE_URL": URL}), logger=RecordingLogger()
        )
        assert isinstance(db, Database)
        assert repr(db) == "PostgresDatabase(db.internal:5433/orders, new)"


def _error(cls: type[psycopg.Error], message: str = "") -> psycopg.Error:
    return cls(message)


class TestErrorMapping:
    """Driver errors map to the documented domain errors, the message free of values."""

    @pytest.mark.parametrize(
        ("driver", "expected", "reason"),
        [
            (pg_errors.UniqueViolation, Conflict, None),
            (pg_errors.ForeignKeyViolation, Conflict, None),
            (pg_errors.ExclusionViolation, Conflict, None),
            (pg_errors.SerializationFailure, Conflict, "transaction_conflict"),
            (pg_errors.DeadlockDetected, Conflict, "transaction_conflict"),
            (pg_errors.QueryCanceled, ServiceUnavailable, "canceled"),
            (pg_errors.LockNotAvailable, ServiceUnavailable, "lock_timeout"),
            (pg_errors.AdminShutdown, ServiceUnavailable, "server"),
            (pg_errors.TooManyConnections, ServiceUnavailable, "server"),
            (pg_errors.ConnectionFailure, ServiceUnavailable, "server"),
            (pg_errors.SyntaxError, InternalServerError, None),
            (pg_errors.NotNullViolation, InternalServerError, None),
            (pg_errors.InvalidTextRepresentation, InternalServerError, None),
            (psycopg.OperationalError, ServiceUnavailable, "connection"),
            (psycopg.InterfaceError, InternalServerError, None),
            (PoolTimeout, ServiceUnavailable, "pool_timeout"),
            (PoolClosed, ServiceUnavailable, "closed"),
        ],
    )
    def test_mapping(
        self, driver: type[psycopg.Error], expected: type[DomainError], reason: str | None
    ):
        """Each driver error class maps to its domain error; the value is never echoed."""
        mapped = _map_error(_error(driver, 'value "s3cret" rejected'), "h:5432/db")
        assert type(mapped) is expected
        assert "s3cret" not in str(mapped)
        if reason is not None:
            assert mapped.details["reason"] == reason

    def test_unique_violation_without_diagnostics(self):
        """A Conflict built without server diagnostics still says what kind it was."""
        mapped = _map_error(_error(pg_errors.UniqueViolation), "h")
        assert mapped.code == "DUPLICATE"
        assert mapped.details["constraint"] == "?"

    def test_parameter_shape_errors(self):
        """psycopg's TypeError about parameter shapes becomes InternalServerError."""
        mapped = _map_error(TypeError("named placeholders require a mapping"), "h")
        assert isinstance(mapped, InternalServerError)
        assert "named placeholders" in str(mapped)
