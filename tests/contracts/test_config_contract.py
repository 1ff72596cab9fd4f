"""The ConfigSource contract on InMemoryConfig and on EnvConfig (environment and .env)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import pytest

from adapters.env_config import EnvConfig
from adapters.memory import InMemoryConfig
from ports.config import ConfigSource
from testing.contracts.config import ConfigContract, ConfigFactory


def dotenv_line(key: str, value: str) -> str:
    """A .env line holding ``value`` exactly (single quotes: only \\ and ' are escaped)."""
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{key}='{quoted}'\n"


class TestInMemoryConfig(ConfigContract):
    """InMemoryConfig: values are the environment layer."""

    @pytest.fixture
    def make_config(self) -> ConfigFactory:
        def make(
            values: Mapping[str, str],
            *,
            prefix: str | None = None,
            defaults: Mapping[str, str] | None = None,
        ) -> ConfigSource:
            return InMemoryConfig(values, prefix=prefix, defaults=defaults)

        return make


class TestEnvConfigFromEnvironment(ConfigContract):
    """EnvConfig: values are the process environment (injected, os.environ untouched)."""

    @pytest.fixture
    def make_config(self, tmp_path: Path) -> ConfigFactory:
        def make(
            values: Mapping[str, str],
            *,
            prefix: str | None = None,
            defaults: Mapping[str, str] | None = None,
        ) -> ConfigSource:
            return EnvConfig(
                prefix=prefix, env_file=tmp_path / ".env", defaults=defaults, environ=values
            )

        return make


class TestEnvConfigFromDotenvFile(ConfigContract):
    """EnvConfig: values are written to a real .env file; the environment is empty."""

    @pytest.fixture
    def make_config(self, tmp_path: Path) -> ConfigFactory:
        counter = itertools.count()

        def make(
            values: Mapping[str, str],
            *,
            prefix: str | None = None,
            defaults: Mapping[str, str] | None = None,
        ) -> ConfigSource:
            directory = tmp_path / str(next(counter))
            directory.mkdir()
            env_file = directory / ".env"
            env_file.write_text(
                "".join(dotenv_line(k, v) for k, v in values.items()),
                encoding="utf-8",
                newline="",
            )
            return EnvConfig(prefix=prefix, env_file=env_file, defaults=defaults, environ={})

        return make
