"""Contract suites: one per port, run against every adapter of that port.

Each module holds plain pytest test classes that use an adapter *factory fixture*
(named in the class docstring); a test module subclasses the class and provides the
fixture for its adapter. Capabilities an adapter lacks skip with a stated reason,
never by weakening an assertion. Import a suite from its module, e.g.
``from testing.contracts.config import ConfigContract``.
"""

__all__: list[str] = []
