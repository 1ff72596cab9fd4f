"""How the NATS adapter reads nats-py's failures: transient or not, and a short reason."""

from __future__ import annotations

import asyncio
from typing import Final

import nats.errors
import nats.js.errors

from adapters._event_rules import describe

__all__ = ["transient", "failure_reason", "AckError", "NoResponders", "is_retryable"]

_TRANSIENT: Final = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
)


def transient(exc: BaseException) -> bool:
    if isinstance(exc, nats.js.errors.APIError) and exc.code == 503:
        return True
    return isinstance(exc, _TRANSIENT)


def failure_reason(exc: BaseException) -> str:
    """``exc`` in one short line for a log or an error message, secrets redacted."""
    return describe(exc).splitlines()[0][:300]


class AckError(Exception):
    """A JetStream API error in a PubAck."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code


class NoResponders(nats.errors.NoRespondersError):
    """No stream captures the subject (yet): JetStream restarting, or stream gone."""


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, AckError):
        return exc.code == 503
    return transient(exc)
