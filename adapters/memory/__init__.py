"""In-memory adapters for unit tests: same ports, same contract suites, no I/O."""

__all__: list[str] = []
