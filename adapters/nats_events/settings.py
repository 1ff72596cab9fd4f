"""NatsSettings: the NATS adapter's settings, read from a ConfigSource."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final, Literal, cast

import attrs

from adapters._config_base import DAY, HOUR, MINUTE, NumberRule, check_number
from adapters.redaction import redact_text
from domain_errors import ConfigurationError
from ports.config import ConfigSource

__all__ = ["NatsSettings", "redact_url"]

_STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_PREFIX: Final = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_NOT_IN_NAME: Final = re.compile(r"[^A-Za-z0-9_-]")
# JetStream accepts names up to 255 characters (JSMaxNameLen) and stores a consumer
# in a directory of that name: stay well under both.
CONSUMER_NAME_MAX: Final = 200
_MIN_MAX_AGE: Final = 0.1  # JetStream: "max age needs to be >= 100ms"
_RETENTION_MAX: Final = 100 * 365 * DAY  # JetStream stores ages as int64 nanoseconds
_INT64_MAX: Final = 2**63 - 1
_TIMEOUT: Final = NumberRule(0, HOUR, low_open=True)
_BACKOFF: Final = NumberRule(0, MINUTE)
_AGE: Final = NumberRule(_MIN_MAX_AGE, _RETENTION_MAX, special=(0,), note="0 (no limit)")
# The configuration key and the accepted values of each numeric field (ADR 0025).
_RULES: Final = {
    "replicas": ("EVENTS_REPLICAS", NumberRule(1, 5, integer=True)),
    "duplicate_window": ("EVENTS_DUPLICATE_WINDOW_S", NumberRule(0, 7 * DAY, low_open=True)),
    "max_age": ("EVENTS_MAX_AGE_S", _AGE),
    "max_bytes": (
        "EVENTS_MAX_BYTES",
        NumberRule(1, _INT64_MAX, integer=True, special=(-1,), note="-1 (no limit)"),
    ),
    "dead_max_age": ("EVENTS_DEAD_MAX_AGE_S", _AGE),
    "publish_retries": ("EVENTS_PUBLISH_RETRIES", NumberRule(0, 100, integer=True)),
    "publish_timeout": ("EVENTS_PUBLISH_TIMEOUT_S", _TIMEOUT),
    "publish_backoff": ("EVENTS_PUBLISH_BACKOFF_S", _BACKOFF),
    "publish_backoff_max": ("EVENTS_PUBLISH_BACKOFF_MAX_S", _BACKOFF),
    "publish_window": ("EVENTS_PUBLISH_WINDOW", NumberRule(1, 1_000_000, integer=True)),
    "api_timeout": ("EVENTS_API_TIMEOUT_S", _TIMEOUT),
    # The idle heartbeat is a fifth of it; below half a second the pull and its
    # heartbeats would be mostly overhead.
    "pull_expires": ("EVENTS_PULL_EXPIRES_S", NumberRule(0.5, HOUR)),
    "max_ack_pending": ("EVENTS_MAX_ACK_PENDING", NumberRule(1, 10_000_000, integer=True)),
    "connect_retries": ("NATS_CONNECT_RETRIES", NumberRule(1, 100, integer=True)),
    "connect_timeout": ("NATS_CONNECT_TIMEOUT_S", _TIMEOUT),
    "connect_backoff": ("NATS_CONNECT_BACKOFF_S", _BACKOFF),
    "reconnect_wait": ("NATS_RECONNECT_WAIT_S", NumberRule(0, MINUTE, low_open=True)),
}
#: The configuration key behind each numeric field, for error messages.
_KEYS: Final = {field: key for field, (key, _) in _RULES.items()}


redact_url: Final = redact_text
"""``url`` with its password, token and any secret parameter hidden: the one redaction
(:func:`adapters.redaction.redact_text`, ADR 0026), kept under this name for importers."""


def _check_name(value: str, key: str, pattern: re.Pattern[str]) -> str:
    if pattern.match(value) is None:
        raise ConfigurationError(
            f"{key} must be letters, digits, '_' or '-' (dot-separated for a prefix)",
            details={"key": key},
        )
    return value


def _in_range(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    key, rule = _RULES[attribute.name]
    check_number(key, value, rule, field=attribute.name)


def _overlap(a: str, b: str) -> bool:
    """Whether ``<a>.>`` and ``<b>.>`` share a subject (one prefix holds the other)."""
    left, right = a.split("."), b.split(".")
    shortest = min(len(left), len(right))
    return left[:shortest] == right[:shortest]


def _default_dead_prefix(settings: Any) -> str:
    return f"dead.{settings.prefix}"


@attrs.frozen(kw_only=True)
class NatsSettings:
    """Settings of a :class:`NatsConnection` (keys and ranges in the package docstring of
    :mod:`adapters.nats_events`); seconds."""

    url: str = attrs.field(repr=lambda url: repr(redact_url(url)))
    stream: str = "EVENTS"
    prefix: str = "events"
    dead_prefix: str = attrs.field(default=attrs.Factory(_default_dead_prefix, takes_self=True))
    replicas: int = attrs.field(default=1, validator=_in_range)
    storage: Literal["file", "memory"] = "file"
    duplicate_window: float = attrs.field(default=120.0, validator=_in_range)
    max_age: float = attrs.field(default=7 * 24 * 3600.0, validator=_in_range)
    max_bytes: int = attrs.field(default=-1, validator=_in_range)
    dead_max_age: float = attrs.field(default=0.0, validator=_in_range)
    publish_retries: int = attrs.field(default=3, validator=_in_range)
    publish_timeout: float = attrs.field(default=5.0, validator=_in_range)
    publish_backoff: float = attrs.field(default=0.1, validator=_in_range)
    publish_backoff_max: float = attrs.field(default=2.0, validator=_in_range)
    publish_window: int = attrs.field(default=2000, validator=_in_range)
    api_timeout: float = attrs.field(default=5.0, validator=_in_range)
    pull_expires: float = attrs.field(default=5.0, validator=_in_range)
    max_ack_pending: int = attrs.field(default=10_000, validator=_in_range)
    connect_retries: int = attrs.field(default=5, validator=_in_range)
    connect_timeout: float = attrs.field(default=2.0, validator=_in_range)
    connect_backoff: float = attrs.field(default=0.2, validator=_in_range)
    reconnect_wait: float = attrs.field(default=0.5, validator=_in_range)
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
                    f"setting EVENTS_DUPLICATE_WINDOW_S must not exceed {key} (JetStream "
                    "refuses a duplicate window longer than the stream's max age)",
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
