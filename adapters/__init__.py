"""Adapters: implementations of the ports on real libraries, plus in-memory ones.

Import each adapter from its own module (``adapters.postgres``,
``adapters.nats_events``...): importing this package loads no third-party library.
"""

__all__: list[str] = []
