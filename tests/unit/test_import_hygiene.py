"""Importing the ports and errors pulls in no third-party I/O library."""

from __future__ import annotations

import subprocess
import sys


def test_ports_and_errors_import_no_io_library() -> None:
    """A fresh interpreter importing ports and domain_errors loads no driver."""
    code = (
        "import sys, ports, ports.events, ports.database, domain_errors, adapters;"
        "heavy = {'structlog', 'psycopg', 'psycopg_pool', 'nats', 'environs',"
        " 'cattrs', 'orjson', 'tenacity'};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
