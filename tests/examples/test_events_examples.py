"""The events examples run as documented and exit 0, on the in-memory bus and on NATS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, f"examples/{script}"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_publisher_example_in_memory() -> None:
    """Without NATS_URL the publisher example publishes to the in-memory bus, dedupes."""
    result = _run("publisher_example.py")
    assert result.returncode == 0, result.stderr
    assert "publishing with InMemoryEventBus" in result.stdout
    assert "duplicate=True" in result.stdout


def test_subscriber_example_in_memory() -> None:
    """Without NATS_URL the subscriber example retries, ships and dead-letters."""
    result = _run("subscriber_example.py")
    assert result.returncode == 0, result.stderr
    assert "attempt 2" in result.stdout
    assert "dead letter:" in result.stdout


@pytest.mark.integration
def test_subscriber_example_on_nats(nats_url: str) -> None:
    """With NATS_URL the subscriber example runs on JetStream the same way."""
    result = _run("subscriber_example.py", NATS_URL=nats_url)
    assert result.returncode == 0, result.stderr
    assert "consuming with NatsSubscriber" in result.stdout
    assert "dead letter:" in result.stdout
