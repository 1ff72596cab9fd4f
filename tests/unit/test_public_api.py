"""The public surface: every public module declares __all__, every public name is
documented, and the design's names exist where the design says they are."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

PACKAGES = ["ports", "domain_errors", "adapters", "testing"]


def public_modules() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


@pytest.mark.parametrize("name", public_modules())
def test_public_module_has_all_and_docstrings(name: str) -> None:
    """Each public module has a docstring and __all__, and each name in __all__ that is a
    class or function has a docstring of its own."""
    module: ModuleType = importlib.import_module(name)
    assert module.__doc__, f"{name} has no module docstring"
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    undocumented = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
            undocumented.append(attr)
    assert not undocumented, f"{name}: undocumented public names {undocumented}"


DESIGN_NAMES = {
    "ports.config": ["ConfigSource"],
    "ports.logger": ["Logger"],
    "ports.database": ["Database", "Transaction", "Row", "Params", "Queryable"],
    "ports.events": [
        "Event",
        "PublishAck",
        "Publisher",
        "Subscriber",
        "Subscription",
        "Handler",
        "Reject",
    ],
    "ports.clock": ["Clock", "SystemClock"],
    "ports.context": ["bind_context", "current_context", "request_id"],
    "domain_errors": [
        "DomainError",
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "Conflict",
        "UnprocessableEntity",
        "TooManyRequests",
        "InternalServerError",
        "ServiceUnavailable",
        "ConfigurationError",
        "ErrorCode",
        "wrap",
        "to_http_response",
        "to_problem_details",
        "ErrorResponse",
    ],
    "adapters.env_config": ["EnvConfig", "load_settings", "Secret"],
    "adapters.structlog_logger": ["StructlogLogger", "configure_logging"],
    "adapters.postgres": ["PostgresDatabase", "PostgresSettings"],
    "adapters.nats_events": ["NatsConnection", "NatsPublisher", "NatsSubscriber"],
    "adapters.asgi": ["RequestContextMiddleware", "DomainErrorMiddleware"],
    "adapters.memory": ["InMemoryConfig", "InMemoryEventBus", "SqliteDatabase"],
    "adapters.bootstrap": ["Infrastructure", "build_infrastructure"],
    "testing.fakes": ["RecordingLogger", "FakeClock", "FlakyDatabase", "FlakyPublisher"],
    "testing.servers": ["postgres_server", "nats_server", "nats_cluster"],
}


@pytest.mark.parametrize(("module", "names"), sorted(DESIGN_NAMES.items()))
def test_design_names_are_exported(module: str, names: list[str]) -> None:
    """Every public name of the design is importable from its module and in __all__."""
    loaded = importlib.import_module(module)
    missing = [n for n in names if n not in getattr(loaded, "__all__", ())]
    assert not missing, f"{module} does not export {missing}"
