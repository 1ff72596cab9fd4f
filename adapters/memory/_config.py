"""InMemoryConfig: a ConfigSource over a dict, for unit tests and scripts."""

from __future__ import annotations

from collections.abc import Mapping

from adapters._config_base import LayeredConfig, Layers, text_map

__all__ = ["InMemoryConfig", "ConfigValue"]

ConfigValue = str | int | float | bool


class InMemoryConfig(LayeredConfig):
    """A :class:`ports.config.ConfigSource` over a mapping, with EnvConfig's semantics.

    ``values`` plays the part of the process environment: with ``prefix="APP"``,
    ``{"APP_PORT": 8080}`` is what ``get_int("port")`` reads. ``defaults`` are keyed
    by setting name (no prefix) and are the lowest layer; ``is_set`` ignores them.
    Keys are case-insensitive and ``.``/``-``/``_`` are the same. Values may be
    given as str, int, float or bool and are stored as text (``True`` -> ``"true"``),
    so typed reads parse exactly as they would from the environment. The mapping
    is copied at construction: later changes to the caller's dict are not seen.
    """

    __slots__ = ("_loaded",)

    def __init__(
        self,
        values: Mapping[str, ConfigValue] | None = None,
        *,
        prefix: str | None = None,
        defaults: Mapping[str, ConfigValue] | None = None,
    ) -> None:
        super().__init__(prefix)
        self._loaded = Layers(
            overrides={},
            values=text_map(values),
            defaults=text_map(defaults),
        )

    def _layers(self) -> Layers:
        return self._loaded

    def with_values(self, **values: ConfigValue) -> InMemoryConfig:
        """A copy with ``values`` added to (or replacing) the environment layer."""
        merged: dict[str, ConfigValue] = {**self._loaded.values, **text_map(values)}
        return InMemoryConfig(merged, prefix=self._prefix or None, defaults=self._loaded.defaults)

    def __repr__(self) -> str:
        keys = ", ".join(sorted(self._loaded.values))
        return f"InMemoryConfig(prefix={self._prefix!r}, keys=[{keys}])"
