"""In-memory adapters for unit tests: same ports, same contract suites, no I/O."""

from ._event_bus import InMemoryEventBus, InMemorySubscription

__all__: list[str] = ["InMemoryEventBus", "InMemorySubscription"]
