"""``python -m adapters.migrations up|status --dir DIR [--namespace NS]``.

Reads ``DATABASE_URL`` (and the ``DB_*`` settings, ``.env`` included) through
:class:`adapters.env_config.EnvConfig`; the pool is one connection. ``up`` applies the
pending migrations and prints the versions it applied; ``status`` prints one line per
migration (version, state, name, applied_at) and changes nothing. Exit code 0 on
success; 1 with a one-line ``error: ...`` on stderr when the files, the settings, the
database or a migration fail (``status`` too when an applied file was changed); 2 for
a usage error. Logs (JSON, ``LOG_LEVEL`` default ``warning``) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from adapters.env_config import EnvConfig
from adapters.structlog_logger import configure_logging
from domain_errors import DomainError
from ports.config import ConfigSource
from ports.database import Database
from ports.logger import Logger

from ._files import load_migrations
from ._runner import migrate, status

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.migrations",
        description="Apply or list versioned SQL migrations (DATABASE_URL from the environment).",
    )
    parser.add_argument("command", choices=("up", "status"))
    parser.add_argument("--dir", required=True, help="directory of NNNN_name.sql files")
    parser.add_argument("--namespace", default="app", help="migration namespace (default: app)")
    return parser


def _database(config: ConfigSource, logger: Logger) -> Database:
    from adapters.postgres import PostgresDatabase

    return PostgresDatabase.from_config(config, logger=logger)


async def _run(args: argparse.Namespace, config: ConfigSource, out: TextIO) -> int:
    load_migrations(args.dir)  # bad files are refused before connecting
    logger = configure_logging(config, stream=sys.stderr)
    database = _database(config, logger)
    await database.connect()
    try:
        if args.command == "up":
            applied = await migrate(database, args.dir, logger=logger, namespace=args.namespace)
            print(f"applied {', '.join(applied)}" if applied else "up to date", file=out)
            return 0
        states = await status(database, args.dir, namespace=args.namespace)
        for s in states:
            when = s.applied_at.isoformat() if s.applied_at is not None else "-"
            print(f"{s.version}\t{s.state}\t{s.name}\t{when}", file=out)
        changed = [s.file or s.version for s in states if s.state == "changed"]
        if changed:
            print(
                f"error: applied migrations changed since they were applied: {', '.join(changed)}",
                file=sys.stderr,
            )
            return 1
        return 0
    finally:
        await database.close()


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    config = EnvConfig(
        defaults={"SERVICE_NAME": "migrations", "LOG_LEVEL": "warning"},
        overrides={"DB_POOL_MIN_SIZE": "1", "DB_POOL_MAX_SIZE": "1"},
    )
    try:
        return asyncio.run(_run(args, config, out if out is not None else sys.stdout))
    except DomainError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 1
    except Exception as exc:
        message = " ".join(str(exc).split())
        print(f"error: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover - python -m (tested in a subprocess)
    sys.exit(main())
