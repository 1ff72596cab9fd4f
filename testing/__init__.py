"""What a service's own tests use: fakes, hypothesis strategies, contract suites,
ephemeral real servers and the pytest plugin (registered as ``pytest11``)."""

__all__: list[str] = []
