"""The configuration and logging examples run as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_config_example_layers_and_hides_the_secret() -> None:
    """The config example loads settings from real .env files and never prints the password."""
    out = run_example("config_example.py")
    assert "Secret('***')" in out
    assert "missing required settings" in out


def test_logging_example_writes_json_lines_with_context_and_redaction() -> None:
    """Every line of the logging example is JSON; secrets are redacted; request_id is bound."""
    lines = [json.loads(line) for line in run_example("logging_example.py").splitlines()]
    assert lines
    assert any(line.get("request_id") == "req-1" for line in lines)
    assert all("[REDACTED]" in json.dumps(line) or "api_key" not in line for line in lines)
