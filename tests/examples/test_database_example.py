"""examples/database_example.py runs and prints what its docstring promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_example(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "database_example.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return {**env, **extra}


def test_runs_on_the_sqlite_fake_by_default():
    """Without DATABASE_URL the example uses SqliteDatabase and the transfer rolls back."""
    out = run_example(_env())
    assert "using SqliteDatabase" in out
    assert "after transfer: {'ada@example.com': 70, 'alan@example.com': 50}" in out
    assert "unchanged: {'ada@example.com': 70, 'alan@example.com': 50}" in out


@pytest.mark.integration
def test_runs_on_postgres_when_database_url_is_set(postgres_url: str):
    """With DATABASE_URL the same example runs on PostgresDatabase, same results."""
    out = run_example(_env(DATABASE_URL=postgres_url))
    assert "using PostgresDatabase" in out
    assert "unchanged: {'ada@example.com': 70, 'alan@example.com': 50}" in out
