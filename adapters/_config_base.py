"""The ConfigSource semantics shared by EnvConfig and InMemoryConfig (stdlib only).

Both adapters reduce their sources to three layers of text keyed by canonical
names (:func:`ports.config.normalize_key`): *overrides* and *defaults*, keyed by
the setting name (no prefix), and *values* (the environment and ``.env`` files,
or the in-memory map), keyed by the prefixed name. Lookup order is overrides >
values > defaults. Parsing is strict and identical for both adapters, so that a
unit test on the fake means the same thing in production:

- int: optional sign and ASCII digits (``"08"`` is 8); no underscores, no other
  scripts' digits, no ``"1.0"``.
- float: a decimal or exponent literal, ``inf``/``infinity``/``nan`` in any case.
- bool: :data:`ports.config.TRUE_WORDS` / :data:`~ports.config.FALSE_WORDS`, any case.

Parsing says nothing about range: ``nan``, ``inf`` and ``10**30`` parse. Each adapter
checks its numeric settings with :class:`NumberRule` / :func:`check_number` (finite, in
range), so that a bad value is a ``ConfigurationError`` naming the key and the expected
range, never the value (ADR 0025).

Surrounding whitespace is ignored for typed getters; ``get``/``get_str`` return the
text as stored. An empty value is a value (``""``), not "unset".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple, TypeVar

from domain_errors import ConfigurationError
from ports.config import FALSE_WORDS, MISSING, TRUE_WORDS, Missing, normalize_key

__all__ = [
    "Layers",
    "LayeredConfig",
    "to_text",
    "text_map",
    "normalize_prefix",
    "parse_int",
    "parse_float",
    "parse_bool",
    "EXPECTED",
    "NumberRule",
    "check_number",
    "MINUTE",
    "HOUR",
    "DAY",
]

T = TypeVar("T")

_INT: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
    re.IGNORECASE,
)
_WS: Final = " \t\r\n\f\v"

#: What each typed getter expects, as written in error messages.
EXPECTED: Final = {
    "int": "a base-10 integer such as 8080",
    "float": "a number such as 2.5",
    "bool": "a boolean: true/false, 1/0, yes/no or on/off",
}


def parse_int(text: str) -> int | None:
    """``text`` as an int, or ``None`` when it is not a strict base-10 integer.

    More digits than Python converts (``sys.get_int_max_str_digits``) is ``None`` too.
    """
    stripped = text.strip(_WS)
    if _INT.fullmatch(stripped) is None:
        return None
    try:
        return int(stripped)
    except ValueError:  # longer than the interpreter's digit limit
        return None


def parse_float(text: str) -> float | None:
    """``text`` as a float, or ``None`` when it is not a plain float literal."""
    stripped = text.strip(_WS)
    if _FLOAT.fullmatch(stripped) is None:
        return None
    return float(stripped)


MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86_400.0


class NumberRule(NamedTuple):
    """The values a numeric setting accepts: ``low``..``high`` (``low`` excluded when
    ``low_open``), plus ``special`` values with a meaning of their own (``-1`` = no
    limit...) described by ``note``. Never NaN or an infinity."""

    low: float
    high: float
    low_open: bool = False
    integer: bool = False
    special: tuple[float, ...] = ()
    note: str = ""

    def admits(self, value: float) -> bool:
        """Whether ``value`` is finite and in range (or one of the special values)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if value in self.special:
            return True
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        """The rule in words, for error messages: ``an integer from 1 to 100``."""
        kind = "an integer" if self.integer else "a finite number"
        low, high = f"{self.low:g}", f"{self.high:g}"
        if self.integer:
            low, high = str(int(self.low)), str(int(self.high))
        span = f"{kind} > {low} and <= {high}" if self.low_open else f"{kind} from {low} to {high}"
        return f"{self.note} or {span}" if self.note else span


def check_number(key: str, value: float, rule: NumberRule, *, field: str | None = None) -> None:
    """``ConfigurationError`` naming ``key`` and ``rule`` unless ``rule`` admits ``value``.

    The message never carries the value. ``field`` (a settings attribute) is added to
    the message when the value came from code rather than from a ConfigSource.
    """
    if rule.admits(value):
        return
    expected = rule.describe()
    where = f"{key} ({field})" if field and field != key else key
    raise ConfigurationError(
        f"setting {where} must be {expected}",
        details={"key": key, "expected": expected},
    )


def parse_bool(text: str) -> bool | None:
    """``text`` as a bool, or ``None`` when it is not one of the boolean words."""
    word = text.strip(_WS).lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def normalize_prefix(prefix: str | None) -> str:
    """``"app"``, ``"APP"`` and ``"APP_"`` all become ``"APP_"``; ``None``/``""`` -> ``""``."""
    if not prefix:
        return ""
    canonical = normalize_key(prefix).strip("_")
    return f"{canonical}_" if canonical else ""


def to_text(key: str, value: object) -> str:
    """The text form of a configured value (``bool`` -> ``true``/``false``).

    Floats use ``repr`` so that they read back exactly. Anything other than str,
    int, float or bool is a ``TypeError`` naming the key (a programming error).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError(
        f"config value for {key!r} must be str, int, float or bool, not {type(value).__name__}"
    )


def text_map(values: Mapping[str, object] | None, prefix: str = "") -> dict[str, str]:
    """``values`` keyed by canonical name (with ``prefix`` prepended), as text.

    When two spellings of one key are given, the one already in canonical form
    wins, whatever the order.
    """
    result: dict[str, str] = {}
    if not values:
        return result
    for key, value in values.items():
        canonical = prefix + normalize_key(key)
        if canonical in result and key != canonical:
            continue
        result[canonical] = to_text(key, value)
    return result


class Layers:
    """The three text layers of a config, keyed by canonical name."""

    __slots__ = ("defaults", "overrides", "values")

    def __init__(
        self,
        *,
        overrides: Mapping[str, str],
        values: Mapping[str, str],
        defaults: Mapping[str, str],
    ) -> None:
        self.overrides = overrides
        self.values = values
        self.defaults = defaults


class LayeredConfig:
    """Typed reads over :class:`Layers`; subclasses provide :meth:`_layers`.

    Implements :class:`ports.config.ConfigSource`. Instances are read-only once
    loaded and safe to share between threads and tasks.
    """

    __slots__ = ("_prefix",)

    def __init__(self, prefix: str | None) -> None:
        self._prefix = normalize_prefix(prefix)

    @property
    def prefix(self) -> str:
        """The canonical prefix, ``"APP_"``, or ``""`` when there is none."""
        return self._prefix

    def _layers(self) -> Layers:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def env_name(self, key: str) -> str:
        """The variable ``key`` is read from: ``"database.url"`` -> ``"APP_DATABASE_URL"``."""
        return self._prefix + normalize_key(key)

    def _find(self, key: str) -> tuple[str | None, bool]:
        """(text, from_defaults) for ``key``; text is ``None`` when not set anywhere."""
        name = normalize_key(key)
        layers = self._layers()
        text = layers.overrides.get(name)
        if text is not None:
            return text, False
        text = layers.values.get(self._prefix + name)
        if text is not None:
            return text, False
        text = layers.defaults.get(name)
        return text, text is not None

    # -- ConfigSource ---------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        """The raw text of ``key`` (defaults included), or ``default`` when not set."""
        text, _ = self._find(key)
        return default if text is None else text

    def get_str(self, key: str, default: str | Missing = MISSING) -> str:
        """The text of ``key``; ``ConfigurationError`` naming it if missing and no default."""
        text, _ = self._find(key)
        if text is not None:
            return text
        return self._default(key, default)

    def get_int(self, key: str, default: int | Missing = MISSING) -> int:
        """``key`` as a strict base-10 integer."""
        text, _ = self._find(key)
        if text is None:
            return self._default(key, default)
        value = parse_int(text)
        if value is None:
            raise self._malformed(key, "int")
        return value

    def get_float(self, key: str, default: float | Missing = MISSING) -> float:
        """``key`` as a float."""
        text, _ = self._find(key)
        if text is None:
            return self._default(key, default)
        value = parse_float(text)
        if value is None:
            raise self._malformed(key, "float")
        return value

    def get_bool(self, key: str, default: bool | Missing = MISSING) -> bool:
        """``key`` as a boolean word (true/false/1/0/yes/no/on/off, any case)."""
        text, _ = self._find(key)
        if text is None:
            return self._default(key, default)
        value = parse_bool(text)
        if value is None:
            raise self._malformed(key, "bool")
        return value

    def is_set(self, key: str) -> bool:
        """Whether ``key`` has a value in an override or the environment (not a default)."""
        text, from_defaults = self._find(key)
        return text is not None and not from_defaults

    def validate(self, required_keys: Iterable[str]) -> None:
        """Raise one ``ConfigurationError`` naming every required key without a value.

        A key with a value in ``defaults`` counts as present.
        """
        missing: list[str] = []
        for key in required_keys:
            name = self.env_name(key)
            if self._find(key)[0] is None and name not in missing:
                missing.append(name)
        if missing:
            raise ConfigurationError(
                f"missing required settings: {', '.join(missing)}",
                details={"missing": missing},
            )

    # -- errors ---------------------------------------------------------------

    def _default(self, key: str, default: T | Missing) -> T:
        if isinstance(default, Missing):
            name = self.env_name(key)
            raise ConfigurationError(
                f"missing required setting {name}", details={"missing": [name]}
            )
        return default

    def _malformed(self, key: str, type_name: str) -> ConfigurationError:
        # The value is never part of the message: it may be a secret.
        name = self.env_name(key)
        return ConfigurationError(
            f"setting {name} is not a valid {type_name}: expected {EXPECTED[type_name]}",
            details={"key": name, "expected": type_name},
        )
