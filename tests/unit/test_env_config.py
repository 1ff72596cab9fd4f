"""EnvConfig: layer precedence with real .env files, environments, no os.environ writes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from adapters._config_base import NumberRule, check_number
from adapters.env_config import EnvConfig
from domain_errors import ConfigurationError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with .env and .env.test, each setting some keys."""
    write(
        tmp_path / ".env",
        "# base settings\n"
        "ONLY_BASE=base\n"
        "IN_BASE_AND_ENV_FILE=base\n"
        "IN_BASE_AND_PROCESS=base\n"
        "IN_ALL=base\n"
        "DEFAULTED=base\n",
    )
    write(
        tmp_path / ".env.test",
        "IN_BASE_AND_ENV_FILE=env-file\nONLY_ENV_FILE=env-file\nIN_ALL=env-file\n",
    )
    return tmp_path


class TestPrecedence:
    def test_each_layer_wins_over_the_ones_below(self, project: Path) -> None:
        """overrides > process env > .env.<environment> > .env > defaults, key by key."""
        config = EnvConfig(
            env_file=project / ".env",
            environment="test",
            environ={"IN_BASE_AND_PROCESS": "process", "IN_ALL": "process", "ONLY_PROCESS": "p"},
            defaults={"defaulted": "default", "only_default": "default", "in_all": "default"},
            overrides={"IN_ALL": "override"},
        )
        assert config.get("IN_ALL") == "override"
        assert config.get("IN_BASE_AND_PROCESS") == "process"
        assert config.get("ONLY_PROCESS") == "p"
        assert config.get("IN_BASE_AND_ENV_FILE") == "env-file"
        assert config.get("ONLY_ENV_FILE") == "env-file"
        assert config.get("ONLY_BASE") == "base"
        assert config.get("DEFAULTED") == "base"
        assert config.get("ONLY_DEFAULT") == "default"

    def test_without_an_environment_only_dotenv_is_read(self, project: Path) -> None:
        """With no APP_ENV anywhere, .env.test is ignored."""
        config = EnvConfig(env_file=project / ".env", environ={})
        assert config.environment is None
        assert config.get("IN_BASE_AND_ENV_FILE") == "base"
        assert config.get("ONLY_ENV_FILE") is None
        assert config.files == (project / ".env",)

    def test_overrides_and_defaults_take_typed_values(self, tmp_path: Path) -> None:
        """overrides and defaults accept int/float/bool and read back typed."""
        config = EnvConfig(
            env_file=tmp_path / ".env",
            environ={},
            defaults={"retries": 3, "ratio": 0.5},
            overrides={"debug": True},
        )
        assert (config.get_int("retries"), config.get_float("ratio")) == (3, 0.5)
        assert config.get_bool("debug") is True
        assert config.is_set("debug")
        assert not config.is_set("retries")


class TestEnvironmentSelection:
    @pytest.mark.parametrize("source", ["environ", "overrides", "dotenv"])
    def test_app_env_selects_the_environment_file(self, project: Path, source: str) -> None:
        """APP_ENV from overrides, the process environment or .env picks .env.<APP_ENV>."""
        environ: dict[str, str] = {}
        overrides: dict[str, str] = {}
        if source == "environ":
            environ["APP_ENV"] = "test"
        elif source == "overrides":
            overrides["APP_ENV"] = "test"
        else:
            with (project / ".env").open("a", encoding="utf-8") as f:
                f.write("APP_ENV=test\n")
        config = EnvConfig(env_file=project / ".env", environ=environ, overrides=overrides)
        assert config.get("ONLY_ENV_FILE") == "env-file"
        assert config.environment == "test"
        assert config.files == (project / ".env", project / ".env.test")

    def test_explicit_environment_wins_over_app_env(self, project: Path) -> None:
        """environment="test" is used even when APP_ENV says otherwise."""
        write(project / ".env.prod", "ONLY_ENV_FILE=prod\n")
        config = EnvConfig(
            env_file=project / ".env", environment="test", environ={"APP_ENV": "prod"}
        )
        assert config.get("ONLY_ENV_FILE") == "env-file"

    def test_missing_environment_file_is_fine(self, project: Path) -> None:
        """An environment without its own file reads .env alone."""
        config = EnvConfig(env_file=project / ".env", environment="staging", environ={})
        assert config.get("ONLY_BASE") == "base"
        assert config.get("ONLY_ENV_FILE") is None

    def test_no_env_file_reads_environment_and_overrides_only(self) -> None:
        """env_file=None reads no file; APP_ENV still comes from the environment."""
        config = EnvConfig(env_file=None, environ={"APP_ENV": "ci", "X": "1"})
        assert config.files == ()
        assert config.environment == "ci"
        assert config.get_int("x") == 1

    @pytest.mark.parametrize("name", ["../etc", "a/b", " ", "-x"])
    def test_an_environment_name_cannot_reach_other_paths(self, project: Path, name: str) -> None:
        """APP_ENV must be a plain name; a path-like value is a ConfigurationError."""
        config = EnvConfig(env_file=project / ".env", environ={"APP_ENV": name})
        with pytest.raises(ConfigurationError, match="APP_ENV"):
            config.open()


class TestDotenvFiles:
    def test_prefix_applies_to_files(self, tmp_path: Path) -> None:
        """With prefix APP, the file's APP_PORT is port and its PORT is not."""
        env = write(tmp_path / ".env", "APP_PORT=8080\nPORT=1\n")
        config = EnvConfig(prefix="APP", env_file=env, environ={})
        assert config.get_int("port") == 8080

    def test_file_syntax(self, tmp_path: Path) -> None:
        """Comments, export, quotes, inline comments, multi-line values and spaces around =."""
        env = write(
            tmp_path / ".env",
            "# a comment\n"
            "export EXPORTED=yes\n"
            "SINGLE='it\\'s $literal'\n"
            'DOUBLE="line1\\nline2"\n'
            "MULTI='a\nb'\n"
            "SPACED = value  # trailing comment\n"
            "database.url=postgresql://db\n"
            "BARE_KEY_WITHOUT_VALUE\n",
        )
        config = EnvConfig(env_file=env, environ={})
        assert config.get_bool("exported") is True
        assert config.get("SINGLE") == "it's $literal"
        assert config.get("DOUBLE") == "line1\nline2"
        assert config.get("MULTI") == "a\nb"
        assert config.get("SPACED") == "value"
        assert config.get("DATABASE_URL") == "postgresql://db"
        assert config.get("BARE_KEY_WITHOUT_VALUE") is None

    def test_values_are_literal(self, tmp_path: Path) -> None:
        """No ${VAR} interpolation: a $ in a password stays as written."""
        env = write(tmp_path / ".env", "DB_PASSWORD=pa$word${HOME}\nOTHER=${DB_PASSWORD}\n")
        config = EnvConfig(env_file=env, environ={"HOME": "/root"})
        assert config.get("DB_PASSWORD") == "pa$word${HOME}"
        assert config.get("OTHER") == "${DB_PASSWORD}"

    def test_canonical_spelling_wins_inside_a_file(self, tmp_path: Path) -> None:
        """When a file spells one key twice, the upper-case form wins wherever it is."""
        env = write(tmp_path / ".env", "LOG_LEVEL=debug\nlog.level=error\n")
        assert EnvConfig(env_file=env, environ={}).get("log_level") == "debug"

    def test_a_line_that_does_not_parse_names_file_and_line(self, tmp_path: Path) -> None:
        """A broken line is a ConfigurationError with the file and line number."""
        env = write(tmp_path / ".env", "GOOD=1\nBAD='unterminated\n")
        with pytest.raises(ConfigurationError, match=r"line 2") as info:
            EnvConfig(env_file=env, environ={}).open()
        assert info.value.details["file"] == str(env)

    def test_an_unreadable_file_is_a_configuration_error(self, tmp_path: Path) -> None:
        """A directory or non-UTF-8 file where .env should be is a ConfigurationError."""
        (tmp_path / "dir.env").mkdir()
        with pytest.raises(ConfigurationError, match=r"dir\.env"):
            EnvConfig(env_file=tmp_path / "dir.env", environ={}).get("X")
        (tmp_path / "latin.env").write_bytes(b"X=caf\xe9\n")
        with pytest.raises(ConfigurationError, match=r"latin\.env"):
            EnvConfig(env_file=tmp_path / "latin.env", environ={}).get("X")

    def test_files_are_read_on_first_use_not_in_the_constructor(self, tmp_path: Path) -> None:
        """The constructor does no I/O: a file created after it is still read."""
        config = EnvConfig(env_file=tmp_path / ".env", environ={})
        write(tmp_path / ".env", "LATE=1\n")
        assert config.open() is config
        assert config.get("LATE") == "1"
        (tmp_path / ".env").unlink()
        assert config.open().get("LATE") == "1"  # read once; open() is idempotent

    def test_relative_env_file_is_resolved_at_construction(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative env_file means relative to the working directory of the constructor."""
        write(tmp_path / ".env", "WHERE=here\n")
        monkeypatch.chdir(tmp_path)
        config = EnvConfig(environ={})
        monkeypatch.chdir(tmp_path.parent)
        assert config.get("WHERE") == "here"

    def test_concurrent_first_reads_load_once(self, tmp_path: Path) -> None:
        """Threads racing on the first read all see the same loaded layers."""
        write(tmp_path / ".env", "K=v\n")
        config = EnvConfig(env_file=tmp_path / ".env", environ={})
        start = threading.Barrier(8)
        seen: list[str | None] = []

        def read() -> None:
            start.wait(timeout=5)
            seen.append(config.get("K"))

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=5)
        assert seen == ["v"] * 8


class TestProcessEnvironment:
    def test_reads_a_snapshot_of_os_environ(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """os.environ is copied at construction; a later change is not seen."""
        monkeypatch.setenv("HEXINFRA_TEST_SNAPSHOT", "before")
        config = EnvConfig(env_file=tmp_path / ".env")
        monkeypatch.setenv("HEXINFRA_TEST_SNAPSHOT", "after")
        monkeypatch.setenv("HEXINFRA_TEST_LATER", "x")
        assert config.get("hexinfra.test.snapshot") == "before"
        assert config.get("HEXINFRA_TEST_LATER") is None

    def test_never_writes_os_environ(self, project: Path) -> None:
        """Loading .env files and reading every key leaves os.environ exactly as it was."""
        before = dict(os.environ)
        config = EnvConfig(env_file=project / ".env", environment="test", overrides={"Z": "1"})
        config.open()
        config.validate(["only_base", "only_env_file", "z"])
        assert dict(os.environ) == before
        assert "ONLY_BASE" not in os.environ

    def test_repr_shows_no_values(self, tmp_path: Path) -> None:
        """repr names the prefix, file and environment, never a value."""
        config = EnvConfig(prefix="app", env_file=tmp_path / ".env", environ={"APP_TOKEN": "tk-1"})
        assert "tk-1" not in repr(config)
        assert "APP_" in repr(config)
        assert config.prefix == "APP_"
        assert config.env_name("db.url") == "APP_DB_URL"


class TestNumbers:
    """Typed reads never raise anything but ConfigurationError."""

    def test_an_integer_longer_than_python_converts_is_malformed(self) -> None:
        """5000 digits (over sys.get_int_max_str_digits) is a ConfigurationError naming the
        key, not a raw ValueError."""
        config = EnvConfig(env_file=None, environ={"DB_POOL_MAX_SIZE": "9" * 5000})
        with pytest.raises(ConfigurationError, match="DB_POOL_MAX_SIZE") as info:
            config.get_int("DB_POOL_MAX_SIZE")
        assert "9999" not in str(info.value)

    def test_number_rule_in_words(self) -> None:
        """NumberRule admits finite values in range (and its special ones) and says so."""
        rule = NumberRule(1, 2**63 - 1, integer=True, special=(-1,), note="-1 (no limit)")
        assert rule.admits(-1)
        assert rule.admits(10**18)
        assert not rule.admits(10**400)
        assert not rule.admits(1.5)
        assert not rule.admits(True)
        timeout = NumberRule(0, 3600, low_open=True)
        assert not any(timeout.admits(v) for v in (0, -1, float("nan"), float("inf"), 1e308))
        assert timeout.describe() == "a finite number > 0 and <= 3600"
        with pytest.raises(ConfigurationError) as info:
            check_number("X_TIMEOUT_S", float("nan"), timeout, field="timeout")
        assert (
            str(info.value)
            == "setting X_TIMEOUT_S (timeout) must be a finite number > 0 and <= 3600"
        )
        assert info.value.details == {"key": "X_TIMEOUT_S", "expected": timeout.describe()}
