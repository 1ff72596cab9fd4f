"""In-memory adapters for unit tests: same ports, same contract suites, no I/O."""

from ._config import InMemoryConfig
from ._event_bus import InMemoryEventBus, InMemorySubscription
from ._sqlite import SqliteDatabase

__all__: list[str] = [
    "InMemoryConfig",
    "InMemoryEventBus",
    "InMemorySubscription",
    "SqliteDatabase",
]
