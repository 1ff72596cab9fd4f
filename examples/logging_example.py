"""Logging: JSON lines with service, request context, tags, errors and redaction.

Run from the repository root: ``.venv/bin/python examples/logging_example.py``
(``LOG_FORMAT=console`` in the environment for the human-readable format).

Two requests are handled concurrently; each line carries its own request_id,
because ``ports.context`` lives in contextvars that asyncio copies per task.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.env_config import EnvConfig
from adapters.structlog_logger import configure_logging
from ports.context import bind_context
from ports.logger import Logger


class PaymentDeclined(Exception):
    """A domain failure to log with its traceback."""


def charge(order_id: str, amount: float) -> None:
    """A payment call that fails for large amounts."""
    if amount > 100:
        raise PaymentDeclined(f"card declined for {order_id}")


async def handle(log: Logger, request_id: str, order_id: str, amount: float) -> None:
    """What an HTTP handler does: bind the request id, log as the work goes."""
    with bind_context(request_id=request_id):
        log.info("order received", order_id=order_id, amount=amount)
        await asyncio.sleep(0)  # let the other request run in between
        try:
            charge(order_id, amount)
            log.info("order placed", order_id=order_id)
        except PaymentDeclined:
            log.error("order failed", order_id=order_id)  # error: {type, message, stack}


async def main() -> None:
    config = EnvConfig(env_file=None, defaults={"SERVICE_NAME": "orders", "LOG_LEVEL": "debug"})
    log = configure_logging(config).bind(component="checkout")

    log.debug("starting", version="1.2.3")
    log.info(
        "connecting",
        dsn="postgresql://orders:s3cr3t@db:5432/orders",  # password written as [REDACTED]
        api_key="ak-live-123",  # secret-looking key: [REDACTED]
        level="not the log level",  # reserved name: kept as tag_level
    )
    await asyncio.gather(
        handle(log, "req-1", "o-1", 25.0),
        handle(log, "req-2", "o-2", 250.0),
    )
    log.warning("shutting down")


if __name__ == "__main__":
    asyncio.run(main())
