"""The ports: small abstract interfaces that domain code depends on.

Import the port modules directly (``from ports.events import Event``) or the names
re-exported here. Nothing here performs I/O or imports a third-party I/O library.
"""

from .clock import Clock, SystemClock
from .config import MISSING, ConfigSource
from .context import bind_context, current_context, request_id
from .database import Database, Params, Queryable, Row, Transaction
from .events import (
    DeadLetter,
    Event,
    Handler,
    PublishAck,
    Publisher,
    Reject,
    Subscriber,
    Subscription,
)
from .logger import Logger

__all__ = [
    "Clock",
    "SystemClock",
    "ConfigSource",
    "MISSING",
    "bind_context",
    "current_context",
    "request_id",
    "Database",
    "Params",
    "Queryable",
    "Row",
    "Transaction",
    "DeadLetter",
    "Event",
    "Handler",
    "Publisher",
    "PublishAck",
    "Reject",
    "Subscriber",
    "Subscription",
    "Logger",
]
