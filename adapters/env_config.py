"""EnvConfig: settings from the process environment and ``.env`` files.

Precedence, highest first::

    overrides  >  process environment  >  .env.<environment>  >  .env  >  defaults

- ``environment`` defaults to ``APP_ENV`` (read, unprefixed, from ``overrides``, the
  process environment, then ``.env``); with ``APP_ENV=test`` the file ``.env.test``
  beside ``env_file`` is read too. Missing files are skipped; ``env_file=None``
  reads no file at all.
- ``os.environ`` is never modified. It is copied once, when the EnvConfig is
  constructed (a memory copy, no I/O); a variable set afterwards is not seen.
  Tests may pass ``environ=`` instead of the process environment.
- ``.env`` files are parsed with python-dotenv's parser (the one environs uses),
  never through ``load_dotenv`` (which writes ``os.environ``) or ``Env.read_env``
  (which did so too until recent environs, sloria/environs#462, and our floor is
  environs 11). Values are literal: no ``${VAR}`` interpolation, so a ``$`` in
  a password stays a ``$``. A line that does not parse is a ``ConfigurationError``
  naming the file and line.
- Files are read once, on :meth:`EnvConfig.open` or on the first read, whichever
  comes first (thread-safe); the constructor does no I/O.
- ``prefix="APP"``: the environment and files are read as ``APP_<KEY>``;
  ``overrides`` and ``defaults`` are keyed by setting name, without the prefix.

Typed reads, errors and :func:`load_settings` are as in :mod:`ports.config`; see
:mod:`adapters._config_base` for the exact parsing rules (shared with
``InMemoryConfig``).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from dotenv.parser import parse_stream

from domain_errors import ConfigurationError
from ports.config import normalize_key

from ._config_base import LayeredConfig, Layers, text_map
from ._settings import CONFIG_KEY, Secret, load_settings

__all__ = ["EnvConfig", "load_settings", "Secret", "CONFIG_KEY", "APP_ENV"]

#: The variable that names the environment (``dev``, ``test``, ``prod``...).
APP_ENV: Final = "APP_ENV"

ConfigValue = str | int | float | bool

_ENVIRONMENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _read_dotenv(path: Path) -> dict[str, str]:
    """The bindings of one ``.env`` file keyed by canonical name; ``{}`` if absent."""
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            bindings = list(parse_stream(stream))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read settings file {path}: {type(exc).__name__}",
            details={"file": str(path)},
        ) from None
    values: dict[str, str] = {}
    for binding in bindings:
        if binding.error:
            line = binding.original.line
            raise ConfigurationError(
                f"settings file {path} line {line} does not parse",
                details={"file": str(path), "line": line},
            )
        if binding.key is None or binding.value is None:
            continue  # a comment, a blank line, or a bare KEY without '='
        key = normalize_key(binding.key)
        if key not in values or binding.key == key:
            values[key] = binding.value
    return values


class EnvConfig(LayeredConfig):
    """:class:`ports.config.ConfigSource` over the environment and ``.env`` files.

    See the module docstring for precedence and the never-mutate rule. Safe to
    share between threads and tasks; reads after loading take no lock.
    """

    __slots__ = (
        "_defaults",
        "_env_file",
        "_environ",
        "_environment",
        "_loaded",
        "_lock",
        "_overrides",
    )

    def __init__(
        self,
        prefix: str | None = None,
        env_file: str | os.PathLike[str] | None = ".env",
        environment: str | None = None,
        defaults: Mapping[str, ConfigValue] | None = None,
        overrides: Mapping[str, ConfigValue] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(prefix)
        # The one read of the process environment: a snapshot, never written.
        self._environ = text_map(dict(os.environ) if environ is None else environ)
        self._env_file = None if env_file is None else Path(env_file).absolute()
        self._environment = environment
        self._defaults = text_map(defaults)
        self._overrides = text_map(overrides)
        self._loaded: Layers | None = None
        self._lock = threading.Lock()

    @property
    def environment(self) -> str | None:
        """The environment name in force (``APP_ENV``); known once the files are read."""
        if self._environment is not None:
            return self._environment
        self._layers()
        return self._environment

    @property
    def files(self) -> tuple[Path, ...]:
        """The ``.env`` files this config reads, lowest precedence first."""
        if self._env_file is None:
            return ()
        environment = self.environment
        if not environment:
            return (self._env_file,)
        return (self._env_file, self._env_file.with_name(f"{self._env_file.name}.{environment}"))

    def open(self) -> EnvConfig:
        """Read the ``.env`` files now (idempotent) and return ``self``.

        Raises ``ConfigurationError`` if a file exists but cannot be read or parsed.
        """
        self._layers()
        return self

    def _layers(self) -> Layers:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> Layers:
        values: dict[str, str] = {}
        base = {} if self._env_file is None else _read_dotenv(self._env_file)
        if self._environment is None:
            self._environment = (
                self._overrides.get(APP_ENV)
                or self._environ.get(APP_ENV)
                or base.get(APP_ENV)
                or None
            )
        if self._env_file is not None:
            values.update(base)
            if self._environment:
                if not _ENVIRONMENT_NAME.fullmatch(self._environment):
                    raise ConfigurationError(
                        f"setting {APP_ENV} must be a plain name such as dev, test or prod",
                        details={"key": APP_ENV, "expected": "name"},
                    )
                name = f"{self._env_file.name}.{self._environment}"
                values.update(_read_dotenv(self._env_file.with_name(name)))
        values.update(self._environ)
        return Layers(overrides=self._overrides, values=values, defaults=self._defaults)

    def __repr__(self) -> str:
        return (
            f"EnvConfig(prefix={self._prefix!r}, env_file={self._env_file!s}, "
            f"environment={self._environment!r})"
        )
