"""NatsSettings: the NATS adapter's settings, read from a ConfigSource."""

from __future__ import annotations

import hashlib
import math
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
_NOT_IN_NAME: Final = re.compile(r"[^A-Za-z0-9_-]")
# JetStream accepts names up to 255 characters (JSMaxNameLen) and stores a consumer
# in a directory of that name: stay well under both.
CONSUMER_NAME_MAX: Final = 200
_MIN_MAX_AGE: Final = 0.1  # JetStream: "max age needs to be >= 100ms"
# The configuration key behind each numeric field, for error messages.
_KEYS: Final = {
    "replicas": "EVENTS_REPLICAS",
    "duplicate_window": "EVENTS_DUPLICATE_WINDOW_S",
    "max_age": "EVENTS_MAX_AGE_S",
    "max_bytes": "EVENTS_MAX_BYTES",
    "dead_max_age": "EVENTS_DEAD_MAX_AGE_S",
    "publish_retries": "EVENTS_PUBLISH_RETRIES",
    "publish_timeout": "EVENTS_PUBLISH_TIMEOUT_S",
    "publish_backoff": "EVENTS_PUBLISH_BACKOFF_S",
    "publish_backoff_max": "EVENTS_PUBLISH_BACKOFF_MAX_S",
    "publish_window": "EVENTS_PUBLISH_WINDOW",
    "api_timeout": "EVENTS_API_TIMEOUT_S",
    "pull_expires": "EVENTS_PULL_EXPIRES_S",
    "max_ack_pending": "EVENTS_MAX_ACK_PENDING",
    "connect_retries": "NATS_CONNECT_RETRIES",
    "connect_timeout": "NATS_CONNECT_TIMEOUT_S",
    "connect_backoff": "NATS_CONNECT_BACKOFF_S",
    "reconnect_wait": "NATS_RECONNECT_WAIT_S",
}


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


def _bad_number(attribute: attrs.Attribute[Any], rule: str) -> ConfigurationError:
    key = _KEYS.get(attribute.name, attribute.name)
    return ConfigurationError(
        f"{key} ({attribute.name}) must be {rule}",
        details={"key": key, "field": attribute.name},
    )


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise _bad_number(attribute, "a finite number > 0")


def _pull_life(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    # The idle heartbeat is a fifth of it; below half a second the pull and its
    # heartbeats would be mostly overhead.
    if not math.isfinite(value) or value < 0.5:
        raise _bad_number(attribute, "a finite number >= 0.5")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise _bad_number(attribute, "a finite number >= 0")


def _max_age(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value < 0 or 0 < value < _MIN_MAX_AGE:
        raise _bad_number(attribute, f"0 (no limit) or a finite number >= {_MIN_MAX_AGE}")


def _max_bytes(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if value != -1 and value <= 0:
        raise _bad_number(attribute, "-1 (no limit) or > 0")


def _overlap(a: str, b: str) -> bool:
    """Whether ``<a>.>`` and ``<b>.>`` share a subject (one prefix holds the other)."""
    left, right = a.split("."), b.split(".")
    shortest = min(len(left), len(right))
    return left[:shortest] == right[:shortest]


def _default_dead_prefix(settings: Any) -> str:
    return f"dead.{settings.prefix}"


@attrs.frozen(kw_only=True)
class NatsSettings:
    """Settings of a :class:`NatsConnection` (keys in the module docstring); seconds."""

    url: str = attrs.field(repr=lambda url: repr(redact_url(url)))
    stream: str = "EVENTS"
    prefix: str = "events"
    dead_prefix: str = attrs.field(default=attrs.Factory(_default_dead_prefix, takes_self=True))
    replicas: int = attrs.field(default=1, validator=_positive)
    storage: Literal["file", "memory"] = "file"
    duplicate_window: float = attrs.field(default=120.0, validator=_positive)
    max_age: float = attrs.field(default=7 * 24 * 3600.0, validator=_max_age)
    max_bytes: int = attrs.field(default=-1, validator=_max_bytes)
    dead_max_age: float = attrs.field(default=0.0, validator=_max_age)
    publish_retries: int = attrs.field(default=3, validator=_non_negative)
    publish_timeout: float = attrs.field(default=5.0, validator=_positive)
    publish_backoff: float = attrs.field(default=0.1, validator=_non_negative)
    publish_backoff_max: float = attrs.field(default=2.0, validator=_non_negative)
    publish_window: int = attrs.field(default=2000, validator=_positive)
    api_timeout: float = attrs.field(default=5.0, validator=_positive)
    pull_expires: float = attrs.field(default=5.0, validator=_pull_life)
    max_ack_pending: int = attrs.field(default=10_000, validator=_positive)
    connect_retries: int = attrs.field(default=5, validator=_positive)
    connect_timeout: float = attrs.field(default=2.0, validator=_positive)
    connect_backoff: float = attrs.field(default=0.2, validator=_non_negative)
    reconnect_wait: float = attrs.field(default=0.5, validator=_positive)
    name: str = "hexinfra"
    service: str = "hexinfra"

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
        if _overlap(self.dead_prefix, self.prefix):
            raise ConfigurationError(
                f"EVENTS_DEAD_PREFIX {self.dead_prefix!r} must differ from EVENTS_PREFIX "
                f"{self.prefix!r} and neither may contain the other (their subjects would "
                "overlap)",
                details={"key": "EVENTS_DEAD_PREFIX"},
            )
        for key, age in (
            ("EVENTS_MAX_AGE_S", self.max_age),
            ("EVENTS_DEAD_MAX_AGE_S", self.dead_max_age),
        ):
            if age and self.duplicate_window > age:
                raise ConfigurationError(
                    f"EVENTS_DUPLICATE_WINDOW_S ({self.duplicate_window:g}) must not exceed "
                    f"{key} ({age:g})",
                    details={"key": key},
                )

    def consumer_name(self, durable: str) -> str:
        """The consumer's name on the server: ``<service>-<durable>``.

        Characters NATS does not allow in a name (``.``, ``*``, ``>``, whitespace, and
        anything but ASCII letters, digits, ``_`` and ``-``) become ``_``; a name longer
        than ``CONSUMER_NAME_MAX`` is cut and ends with a hash of the whole name, so
        two long durables never share a consumer.
        """
        name = _NOT_IN_NAME.sub("_", f"{self.service}-{durable}")
        if len(name) <= CONSUMER_NAME_MAX:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        return f"{name[: CONSUMER_NAME_MAX - len(digest) - 1]}_{digest}"

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
        prefix = config.get_str("EVENTS_PREFIX", "events")
        service = config.get_str("SERVICE_NAME", "hexinfra") or "hexinfra"
        return cls(
            url=config.get_str("NATS_URL"),
            stream=config.get_str("EVENTS_STREAM", "EVENTS"),
            prefix=prefix,
            dead_prefix=config.get_str("EVENTS_DEAD_PREFIX", f"dead.{prefix}"),
            replicas=config.get_int("EVENTS_REPLICAS", 1),
            storage=cast(Literal["file", "memory"], storage),
            duplicate_window=config.get_float("EVENTS_DUPLICATE_WINDOW_S", 120.0),
            max_age=config.get_float("EVENTS_MAX_AGE_S", 7 * 24 * 3600.0),
            max_bytes=config.get_int("EVENTS_MAX_BYTES", -1),
            dead_max_age=config.get_float("EVENTS_DEAD_MAX_AGE_S", 0.0),
            publish_retries=config.get_int("EVENTS_PUBLISH_RETRIES", 3),
            publish_timeout=config.get_float("EVENTS_PUBLISH_TIMEOUT_S", 5.0),
            publish_backoff=config.get_float("EVENTS_PUBLISH_BACKOFF_S", 0.1),
            publish_backoff_max=config.get_float("EVENTS_PUBLISH_BACKOFF_MAX_S", 2.0),
            publish_window=config.get_int("EVENTS_PUBLISH_WINDOW", 2000),
            api_timeout=config.get_float("EVENTS_API_TIMEOUT_S", 5.0),
            pull_expires=config.get_float("EVENTS_PULL_EXPIRES_S", 5.0),
            max_ack_pending=config.get_int("EVENTS_MAX_ACK_PENDING", 10_000),
            connect_retries=config.get_int("NATS_CONNECT_RETRIES", 5),
            connect_timeout=config.get_float("NATS_CONNECT_TIMEOUT_S", 2.0),
            connect_backoff=config.get_float("NATS_CONNECT_BACKOFF_S", 0.2),
            reconnect_wait=config.get_float("NATS_RECONNECT_WAIT_S", 0.5),
            name=service,
            service=service,
        )
