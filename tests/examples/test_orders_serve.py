"""``python -m examples.orders serve``'s app under a real uvicorn (in-memory adapters)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from adapters.memory import InMemoryConfig
from adapters.structlog_logger import StructlogLogger
from examples.orders.app import ServedApp, configure_telemetry, main
from testing.fakes import RecordingLogger

REPO = Path(__file__).resolve().parents[2]


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


def _wait_until(probe: Callable[[], str | None], timeout: float, what: str) -> str:
    """``probe()``'s first non-None answer, polled until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = probe()
        except httpx.TransportError:
            answer = None
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


METRIC_SAMPLES = (  # how a sample line of each family begins
    "hexinfra_events_published_total{",
    'hexinfra_events_handled_total{hexinfra_outcome="ack"',
    "hexinfra_db_query_duration_seconds_bucket{",
    "hexinfra_db_pool_in_use{",
    "hexinfra_db_pool_waiting{",
    "hexinfra_outbox_lag_seconds ",
)


@pytest.mark.integration
def test_serve_exposes_the_hexinfra_metrics_in_prometheus_format(
    database_url: str, events_config: dict[str, str]
) -> None:
    """serve on PostgreSQL and NATS: after an order, /metrics has every hexinfra family."""
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "NATS_URL", "INFRA_ADAPTERS") and not k.startswith("OTEL_")
    }
    env.update(events_config)
    env.update({"DATABASE_URL": database_url, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.orders", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def healthy() -> str | None:
            assert process.poll() is None, "serve exited"
            response = httpx.get(f"{base}/health", timeout=2)
            return response.text if response.status_code == 200 else None

        _wait_until(healthy, 60, "serve to be healthy")
        order = {"id": "o-m1", "organization_id": "org-m", "customer": "Ada", "amount_cents": 99}
        assert httpx.post(f"{base}/orders", json=order, timeout=10).status_code == 201
        scraped: list[httpx.Response] = []

        def all_families() -> str | None:
            response = httpx.get(f"{base}/metrics", timeout=5)
            scraped.append(response)
            lines = response.text.splitlines()
            missing = [m for m in METRIC_SAMPLES if not any(x.startswith(m) for x in lines)]
            return None if missing else response.text

        text = _wait_until(all_families, 30, "every hexinfra metric family")
        response = scraped[-1]
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "x-request-id" not in response.headers
        lines = text.splitlines()
        (published,) = [
            line for line in lines if line.startswith("hexinfra_events_published_total{")
        ]
        assert 'messaging_destination_name="order.placed"' in published
        assert float(published.rsplit(" ", 1)[1]) >= 1.0
        assert any('db_system_name="postgresql"' in line for line in lines if "pool_in_use" in line)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        output = process.stdout.read() if process.stdout else ""
    assert process.returncode == 0, output[-4000:]
    # The pure-ASGI recipe's server span: the order's access line is inside a trace.
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (placed,) = [
        r for r in records if r["message"] == "request completed" and r["path"] == "/orders"
    ]
    assert len(placed["trace_id"]) == 32


def test_otel_disabled_configures_no_metrics() -> None:
    """OTEL_ENABLED=false: configure_telemetry sets no provider and gives no /metrics app."""
    config = InMemoryConfig({"OTEL_ENABLED": "false"})
    assert configure_telemetry(config, RecordingLogger()) is None
