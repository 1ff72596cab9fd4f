"""Properties of settings loading, Secret, and log redaction on arbitrary input."""

from __future__ import annotations

import io
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters._log_fields import clean_value, redact_text
from adapters.env_config import Secret, load_settings
from adapters.memory import InMemoryConfig
from adapters.structlog_logger import StructlogLogger
from domain_errors import ConfigurationError
from ports.logger import REDACTED, SECRET_KEY_PARTS
from testing.strategies import config_maps, secret_texts

FAST = settings(max_examples=60, deadline=None)


@attrs.frozen
class Tuning:
    workers: int
    ratio: float
    enabled: bool
    name: str
    api_token: Secret


class TestLoadSettings:
    @FAST
    @given(
        workers=st.integers(),
        ratio=st.floats(allow_nan=False),
        enabled=st.booleans(),
        name=st.text(st.characters(blacklist_characters="\x00"), max_size=20),
        token=secret_texts(),
    )
    def test_typed_values_round_trip(
        self, workers: int, ratio: float, enabled: bool, name: str, token: str
    ) -> None:
        """Any int/float/bool/text/secret written as config reads back equal into the class."""
        config = InMemoryConfig(
            {
                "T_WORKERS": workers,
                "T_RATIO": ratio,
                "T_ENABLED": enabled,
                "T_NAME": name,
                "T_API_TOKEN": token,
            }
        )
        loaded = load_settings(Tuning, config, prefix="t")
        assert loaded == Tuning(workers, ratio, enabled, name, Secret(token))
        assert repr(loaded).endswith("api_token=Secret('***'))")

    @FAST
    @given(values=config_maps(min_size=1, max_size=6))
    def test_validate_names_exactly_the_absent_keys(self, values: dict[str, str]) -> None:
        """validate over present + absent keys reports exactly the absent ones."""
        config = InMemoryConfig(values)
        absent = [f"ABSENT_{i}" for i in range(3)]
        with pytest.raises(ConfigurationError) as info:
            config.validate([*values, *absent])
        assert info.value.details["missing"] == absent


class TestSecret:
    @FAST
    @given(value=st.text(min_size=1).filter(lambda v: v not in "Secret('***')"))
    def test_never_shows_its_value(self, value: str) -> None:
        """repr/str/format of a Secret never contain its value (unless it is part of '***')."""
        secret = Secret(value)
        assert value not in repr(secret)
        assert value not in str(secret)
        assert value not in f"{secret:>10}"
        assert secret.reveal() == value


json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
secret_keys = st.sampled_from(SECRET_KEY_PARTS).flatmap(
    lambda part: st.sampled_from([part, part.upper(), f"db_{part}", f"{part}_value"])
)


class TestRedaction:
    @FAST
    @given(
        secret=secret_texts(),
        key=secret_keys,
        shape=st.recursive(
            st.just("SLOT"),
            lambda inner: (
                st.lists(inner, min_size=1, max_size=3)
                | st.dictionaries(st.text("abc", max_size=3), inner, min_size=1, max_size=3)
            ),
            max_leaves=6,
        ),
    )
    def test_secret_keys_are_redacted_at_any_depth(self, secret: str, key: str, shape: Any) -> None:
        """A secret under a secret-looking key anywhere in a structure never survives cleaning."""

        def fill(node: Any) -> Any:
            if node == "SLOT":
                return {key: secret, "plain": 1}
            if isinstance(node, list):
                return [fill(n) for n in node]
            return {k: fill(v) for k, v in node.items()}

        cleaned = clean_value(fill(shape))
        assert secret not in repr(cleaned)
        assert REDACTED in repr(cleaned)

    @FAST
    @given(
        scheme=st.sampled_from(["postgresql", "nats", "redis", "amqp", "https", "mongodb+srv"]),
        user=st.text("abcxyz019_.", max_size=8),
        password=secret_texts(),
        host=st.from_regex(r"[a-z][a-z0-9.-]{0,10}(:[0-9]{1,5})?", fullmatch=True),
        before=st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters=":@"), max_size=10
        ),
    )
    def test_url_passwords_are_redacted(
        self, scheme: str, user: str, password: str, host: str, before: str
    ) -> None:
        """user:password@host in any text keeps scheme, user and host but not the password."""
        url = f"{scheme}://{user}:{password}@{host}/path"
        text = redact_text(f"{before} {url} tail")
        assert text == f"{before} {scheme}://{user}:{REDACTED}@{host}/path tail"

    @FAST
    @given(
        secret=secret_texts(),
        key=secret_keys,
        tags=st.dictionaries(st.text("xyz_", min_size=1, max_size=5), json_leaf, max_size=4),
    )
    def test_json_lines_never_carry_the_secret(
        self, secret: str, key: str, tags: dict[str, Any]
    ) -> None:
        """StructlogLogger's real output never contains a secret tag's value."""
        stream = io.BytesIO()
        log = StructlogLogger(service="p", stream=stream)
        log.bind(**{key: secret}).info("m", **tags, nested={key: secret})
        line = orjson.loads(stream.getvalue())
        assert secret.encode() not in stream.getvalue()
        assert line[key] == REDACTED
