"""``python -m examples.orders serve``'s app under a real uvicorn (in-memory adapters)."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from adapters.memory import InMemoryConfig
from adapters.structlog_logger import StructlogLogger
from examples.orders.app import ServedApp, main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_stdlib_capture() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("no_stdlib_capture")
def test_served_app_connects_serves_and_closes() -> None:
    stream = io.StringIO()
    logger = StructlogLogger(service="orders", stream=stream)
    config = InMemoryConfig({"INFRA_ADAPTERS": "memory", "SERVICE_NAME": "orders"})
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            ServedApp(config, logger=logger, reason="test"),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    order = {"id": "o-1", "organization_id": "org-7", "customer": "Ada", "amount_cents": 4200}
    placed = httpx.post(f"{base}/orders", json=order, headers={"X-Request-ID": "req-s-1"})
    assert placed.status_code == 201
    assert placed.headers["x-request-id"] == "req-s-1"
    assert httpx.get(f"{base}/orders/o-1").json()["customer"] == "Ada"
    assert httpx.get(f"{base}/health").json()["healthy"] is True
    missing = httpx.get(f"{base}/orders/o-9", headers={"Accept": "application/problem+json"})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    server.should_exit = True
    thread.join(10)
    messages = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert "infrastructure connected" in messages
    assert "adapters chosen" in messages


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    assert "usage: python -m examples.orders [serve]" in capsys.readouterr().err
