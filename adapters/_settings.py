"""Typed settings classes from any ConfigSource: ``load_settings`` and ``Secret``.

Re-exported by :mod:`adapters.env_config`; works with every ConfigSource
(``EnvConfig``, ``InMemoryConfig``...).
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError

from domain_errors import ConfigurationError
from ports.config import ConfigSource, normalize_key

from ._config_base import EXPECTED, parse_bool, parse_float, parse_int

__all__ = ["Secret", "load_settings", "CONFIG_KEY"]

T = TypeVar("T")

#: attrs field metadata naming the setting to read instead of ``<prefix>.<field>``:
#: ``url: str = attrs.field(metadata={CONFIG_KEY: "database.url"})``.
CONFIG_KEY: Final = "config_key"

_MASK: Final = "***"


@typing.final
class Secret:
    """A value that must not be shown: repr/str/format give ``'***'``.

    ``reveal()`` returns the value; call it at the one place that needs it
    (building a connection). Two secrets are equal when their values are.
    Serialising a Secret with ``str``/``repr`` (loggers, tracebacks, f-strings)
    writes ``***``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        self._value = value.reveal() if isinstance(value, Secret) else value

    def reveal(self) -> str:
        """The secret value."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


class _Malformed(ValueError):
    """Raised by our structure hooks; carries no value, only what was expected."""


def _strict(parse: Callable[[str], T | None], type_name: str) -> Callable[[Any, Any], T]:
    def hook(value: Any, _: Any) -> T:
        parsed = parse(str(value))
        if parsed is None:
            raise _Malformed(type_name)
        return parsed

    return hook


def _seconds(value: Any, _: Any) -> timedelta:
    parsed = parse_float(str(value))
    if parsed is None:
        raise _Malformed("timedelta")
    try:
        return timedelta(seconds=parsed)
    except (OverflowError, ValueError):
        raise _Malformed("timedelta") from None


def _is_sequence(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple, frozenset, set)


def _sequence_hook(converter: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        item = args[0] if args else str

        def hook(value: Any, _: Any) -> Any:
            parts = [p.strip() for p in str(value).split(",")] if value != "" else []
            items = [converter.structure(p, item) for p in parts if p]
            return origin(items)

        return hook

    return factory


@functools.cache
def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    converter.register_structure_hook(int, _strict(parse_int, "int"))
    converter.register_structure_hook(float, _strict(parse_float, "float"))
    converter.register_structure_hook(bool, _strict(parse_bool, "bool"))
    converter.register_structure_hook(str, lambda value, _: str(value))
    converter.register_structure_hook(Secret, lambda value, _: Secret(str(value)))
    converter.register_structure_hook(Path, lambda value, _: Path(str(value)))
    converter.register_structure_hook(timedelta, _seconds)
    converter.register_structure_hook_factory(_is_sequence, _sequence_hook(converter))
    return converter


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(tp)
    )


def _describe(tp: Any) -> str:
    """What a field of type ``tp`` expects, in words (never a value)."""
    if _allows_none(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in inner)
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if tp is timedelta:
        return "a duration in seconds such as 2.5"
    if _is_sequence(tp):
        return "a comma-separated list"
    name = getattr(tp, "__name__", str(tp))
    return EXPECTED.get(name, f"a valid {name}")


def _env_name(config: ConfigSource, key: str) -> str:
    env_name = getattr(config, "env_name", None)
    return str(env_name(key)) if callable(env_name) else normalize_key(key)


def _structure(
    cls: type[T], raw: dict[str, Any], names: dict[str, str], missing_fields: set[str]
) -> tuple[T | None, dict[str, str]]:
    """``cls`` from ``raw`` with cattrs, or ``None`` and {variable: expected} per bad field."""
    try:
        return _converter().structure(raw, cls), {}
    except ClassValidationError as error:
        invalid: dict[str, str] = {}
        for exc in error.exceptions:
            notes = [
                n for n in getattr(exc, "__notes__", ()) if isinstance(n, AttributeValidationNote)
            ]
            if not notes:  # pragma: no cover - cattrs notes every attribute error
                invalid[cls.__name__] = "valid settings"
            elif notes[0].name not in missing_fields:
                invalid[names[notes[0].name]] = _describe(notes[0].type)
        return None, invalid


def load_settings(cls: type[T], config: ConfigSource, prefix: str | None = None) -> T:
    """Build the attrs class ``cls`` from ``config``, one setting per field.

    Field ``pool_min_size`` with ``prefix="db"`` reads ``db.pool_min_size`` (the
    variable ``DB_POOL_MIN_SIZE``); ``attrs.field(metadata={CONFIG_KEY: "database.url"})``
    names the key explicitly. A field with a default may be left unset; an
    ``X | None`` field without a default is ``None`` when unset. Types: str, int,
    float, bool (as in ``ConfigSource``), ``Secret``, ``Path``, ``timedelta`` (seconds),
    ``Literal``, ``Enum`` (by value), ``list``/``tuple`` (comma-separated) and
    ``X | None``. Values are structured with cattrs.

    Every missing and every malformed field is reported in one
    ``ConfigurationError`` naming the variables and the expected types; values are
    never included, so a malformed secret does not leak.
    """
    target: type[T] = cls  # attrs.has() narrows ``cls`` to AttrsInstance below
    if not attrs.has(cls):
        raise TypeError(f"load_settings needs an attrs class, not {cls!r}")
    attrs.resolve_types(cls)
    raw: dict[str, Any] = {}
    names: dict[str, str] = {}
    missing: list[str] = []
    missing_fields: set[str] = set()
    for field in attrs.fields(cls):
        explicit = field.metadata.get(CONFIG_KEY)
        key = str(explicit) if explicit else (f"{prefix}.{field.name}" if prefix else field.name)
        names[field.name] = _env_name(config, key)
        text = config.get(key)
        if text is not None:
            raw[field.alias or field.name] = text
        elif field.default is not attrs.NOTHING:
            continue
        elif _allows_none(field.type):
            raw[field.alias or field.name] = None
        else:
            missing.append(names[field.name])
            missing_fields.add(field.name)

    result, invalid = _structure(target, raw, names, missing_fields)
    if missing or invalid or result is None:
        problems: list[str] = []
        if missing:
            problems.append("missing " + ", ".join(missing))
        problems.extend(f"{name} must be {expected}" for name, expected in invalid.items())
        raise ConfigurationError(
            f"invalid settings for {cls.__name__}: " + "; ".join(problems),
            details={"missing": missing, "invalid": invalid},
        ) from None
    return result
