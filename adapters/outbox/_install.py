"""install(): the outbox and inbox tables, as the library's own migrations."""

from __future__ import annotations

import importlib.resources
from typing import Final

from adapters.migrations import migrate
from ports.clock import Clock
from ports.database import Database
from ports.logger import Logger

__all__ = ["install", "NAMESPACE"]

NAMESPACE: Final = "hexinfra"


async def install(database: Database, *, logger: Logger, clock: Clock | None = None) -> list[str]:
    """Create (or upgrade) ``hexinfra_outbox`` and ``hexinfra_inbox``.

    Runs the ``.sql`` files shipped in ``adapters/outbox/migrations`` through
    :func:`adapters.migrations.migrate` in namespace ``hexinfra`` (never colliding
    with a service's own ``app`` versions); safe for replicas starting together.
    Returns the versions applied (empty when up to date).
    """
    directory = importlib.resources.files("adapters.outbox") / "migrations"
    return await migrate(database, directory, logger=logger, namespace=NAMESPACE, clock=clock)
