"""NatsSettings: the NATS adapter's settings, read from a ConfigSource."""

from __future__ import annotations

import re
from typing import Any, Final, Literal, cast

import attrs

from domain_errors import ConfigurationError
from ports.config import ConfigSource

__all__ = ["NatsSettings", "redact_url"]

_STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_PREFIX: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_URL_PASSWORD: Final = re.compile(r"(?P<head>://[^:/?#@\s]*:)[^@/\s]*(?P<at>@)")
_URL_TOKEN: Final = re.compile(r"(?P<head>://)[^:/?#@\s]+(?P<at>@)")


def redact_url(url: str) -> str:
    """``url`` with a password or token replaced by ``***``."""
    return _URL_TOKEN.sub(r"\g<head>***\g<at>", _URL_PASSWORD.sub(r"\g<head>***\g<at>", url))


def _check_name(value: str, key: str, pattern: re.Pattern[str]) -> str:
    if pattern.match(value) is None:
        raise ConfigurationError(
            f"{key} must be letters, digits, '_' or '-' (dot-separated for a prefix)",
            details={"key": key},
        )
    return value


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be > 0", details={"field": attribute.name})


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(
            f"{attribute.name} must be >= 0", details={"field": attribute.name}
        )


@attrs.frozen(kw_only=True)
class NatsSettings:
    """Settings of a :class:`NatsConnection` (keys in the module docstring); seconds."""

    url: str = attrs.field(repr=lambda url: repr(redact_url(url)))
    stream: str = "EVENTS"
    prefix: str = "events"
    dead_prefix: str = "dead"
    replicas: int = attrs.field(default=1, validator=_positive)
    storage: Literal["file", "memory"] = "file"
    duplicate_window: float = attrs.field(default=120.0, validator=_positive)
    publish_retries: int = attrs.field(default=3, validator=_non_negative)
    publish_timeout: float = attrs.field(default=5.0, validator=_positive)
    publish_backoff: float = attrs.field(default=0.1, validator=_non_negative)
    publish_backoff_max: float = attrs.field(default=2.0, validator=_non_negative)
    publish_window: int = attrs.field(default=2000, validator=_positive)
    api_timeout: float = attrs.field(default=5.0, validator=_positive)
    pull_batch: int = attrs.field(default=128, validator=_positive)
    pull_expires: float = attrs.field(default=5.0, validator=_positive)
    max_ack_pending: int = attrs.field(default=10_000, validator=_positive)
    connect_retries: int = attrs.field(default=5, validator=_positive)
    connect_timeout: float = attrs.field(default=2.0, validator=_positive)
    connect_backoff: float = attrs.field(default=0.2, validator=_non_negative)
    reconnect_wait: float = attrs.field(default=0.5, validator=_positive)
    name: str = "hexinfra"

    def __attrs_post_init__(self) -> None:
        if not self.url.strip():
            raise ConfigurationError("NATS_URL must not be empty", details={"key": "NATS_URL"})
        _check_name(self.stream, "EVENTS_STREAM", _STREAM_NAME)
        _check_name(self.prefix, "EVENTS_PREFIX", _PREFIX)
        _check_name(self.dead_prefix, "EVENTS_DEAD_PREFIX", _PREFIX)
        if self.storage not in ("file", "memory"):
            raise ConfigurationError(
                "EVENTS_STORAGE must be file or memory", details={"key": "EVENTS_STORAGE"}
            )
        if self.dead_prefix == self.prefix:
            raise ConfigurationError(
                "EVENTS_DEAD_PREFIX must differ from EVENTS_PREFIX",
                details={"key": "EVENTS_DEAD_PREFIX"},
            )

    @property
    def servers(self) -> list[str]:
        """The server URLs (``url`` split on commas)."""
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def dead_stream(self) -> str:
        """The dead-letter stream: ``<stream>_DEAD``."""
        return f"{self.stream}_DEAD"

    @classmethod
    def from_config(cls, config: ConfigSource) -> NatsSettings:
        """Read the settings from ``config``; ``ConfigurationError`` naming bad keys."""
        storage = config.get_str("EVENTS_STORAGE", "file").strip().lower()
        return cls(
            url=config.get_str("NATS_URL"),
            stream=config.get_str("EVENTS_STREAM", "EVENTS"),
            prefix=config.get_str("EVENTS_PREFIX", "events"),
            dead_prefix=config.get_str("EVENTS_DEAD_PREFIX", "dead"),
            replicas=config.get_int("EVENTS_REPLICAS", 1),
            storage=cast(Literal["file", "memory"], storage),
            duplicate_window=config.get_float("EVENTS_DUPLICATE_WINDOW_S", 120.0),
            publish_retries=config.get_int("EVENTS_PUBLISH_RETRIES", 3),
            publish_timeout=config.get_float("EVENTS_PUBLISH_TIMEOUT_S", 5.0),
            publish_backoff=config.get_float("EVENTS_PUBLISH_BACKOFF_S", 0.1),
            publish_backoff_max=config.get_float("EVENTS_PUBLISH_BACKOFF_MAX_S", 2.0),
            publish_window=config.get_int("EVENTS_PUBLISH_WINDOW", 2000),
            api_timeout=config.get_float("EVENTS_API_TIMEOUT_S", 5.0),
            pull_batch=config.get_int("EVENTS_PULL_BATCH", 128),
            pull_expires=config.get_float("EVENTS_PULL_EXPIRES_S", 5.0),
            max_ack_pending=config.get_int("EVENTS_MAX_ACK_PENDING", 10_000),
            connect_retries=config.get_int("NATS_CONNECT_RETRIES", 5),
            connect_timeout=config.get_float("NATS_CONNECT_TIMEOUT_S", 2.0),
            connect_backoff=config.get_float("NATS_CONNECT_BACKOFF_S", 0.2),
            reconnect_wait=config.get_float("NATS_RECONNECT_WAIT_S", 0.5),
            name=config.get_str("SERVICE_NAME", "hexinfra") or "hexinfra",
        )
