"""Which extra brings each real adapter's driver, and the error when it is missing."""

from __future__ import annotations

import importlib.util
from typing import Final

from domain_errors import ConfigurationError

__all__ = ["EXTRAS", "require_extra", "installed"]

EXTRAS: Final = {
    "postgres": ("psycopg", "psycopg_pool"),
    "nats": ("nats",),
    "otel": ("opentelemetry.trace",),
}
"""Each extra and the modules it installs."""


def require_extra(extra: str, adapter: str) -> None:
    """``ConfigurationError`` naming ``extra`` when one of its modules is missing (an
    adapter's driver that ``pip install 'hexinfra[<extra>]'`` brings)."""
    missing = [name for name in EXTRAS[extra] if not installed(name)]
    if missing:
        raise ConfigurationError(
            f"{adapter} needs {', '.join(missing)}, which the {extra!r} extra installs: "
            f"pip install 'hexinfra[{extra}]'",
            details={"extra": extra, "missing": missing},
        )


def installed(name: str) -> bool:
    """Whether module ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: blocked (sys.modules[name] is None)
        return False
