"""ConfigSource: where settings come from."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol, TypeVar, runtime_checkable

__all__ = ["ConfigSource", "MISSING", "Missing", "normalize_key", "TRUE_WORDS", "FALSE_WORDS"]

T = TypeVar("T")


class Missing:
    """Type of :data:`MISSING`, the "no default given" marker."""

    __slots__ = ()
    _instance: Missing | None = None

    def __new__(cls) -> Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = Missing()

TRUE_WORDS: Final = frozenset({"true", "1", "yes", "on", "y", "t"})
FALSE_WORDS: Final = frozenset({"false", "0", "no", "off", "n", "f"})


def normalize_key(key: str) -> str:
    """The canonical form of a setting name: upper case, ``.`` and ``-`` as ``_``.

    ``database.url``, ``DATABASE_URL`` and ``database_url`` all become
    ``DATABASE_URL``.
    """
    return key.strip().replace(".", "_").replace("-", "_").upper()


@runtime_checkable
class ConfigSource(Protocol):
    """Read-only typed access to settings.

    Contract:

    - Keys are case-insensitive and ``.``/``_`` are the same: ``database.url``
      names ``DATABASE_URL``. With a prefix ``APP`` it is read from
      ``APP_DATABASE_URL``.
    - A missing key without a default raises
      :class:`domain_errors.ConfigurationError` naming the key. A malformed value
      raises ``ConfigurationError`` naming the key and the expected type, and never
      the value of a secret-looking key.
    - Booleans accept true/false/1/0/yes/no/on/off in any case.
    - ``validate`` names every missing key in one error.
    - Reads have no side effects; a source is safe to share between threads and
      tasks. Config is read at start-up, so the port is synchronous.
    """

    def get(self, key: str, default: str | None = None) -> str | None:
        """The raw text of ``key``, or ``default`` when it is not set."""
        ...

    def get_str(self, key: str, default: str | Missing = MISSING) -> str:
        """The text of ``key``; ``ConfigurationError`` if missing and no default."""
        ...

    def get_int(self, key: str, default: int | Missing = MISSING) -> int:
        """``key`` parsed as a base-10 integer."""
        ...

    def get_float(self, key: str, default: float | Missing = MISSING) -> float:
        """``key`` parsed as a float."""
        ...

    def get_bool(self, key: str, default: bool | Missing = MISSING) -> bool:
        """``key`` parsed as a boolean word."""
        ...

    def is_set(self, key: str) -> bool:
        """Whether ``key`` has a value in any layer (a default does not count)."""
        ...

    def validate(self, required_keys: Iterable[str]) -> None:
        """Raise one ``ConfigurationError`` naming every key that is not set."""
        ...
