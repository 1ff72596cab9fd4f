"""Configuration: layered EnvConfig with real .env files, typed settings, one clear error.

Run from the repository root: ``.venv/bin/python examples/config_example.py``

It writes a ``.env`` and a ``.env.dev`` into a temporary directory, then shows the
precedence (overrides > process environment > .env.<APP_ENV> > .env > defaults),
typed getters, a frozen attrs settings class built with ``load_settings``, a
``Secret`` that never prints, and ``validate`` naming every missing key at once.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.env_config import CONFIG_KEY, EnvConfig, Secret, load_settings
from domain_errors import ConfigurationError


@attrs.frozen
class DatabaseSettings:
    """Read from ORDERS_DATABASE_URL and ORDERS_DB_* (the config's prefix is ORDERS)."""

    url: Secret = attrs.field(metadata={CONFIG_KEY: "database.url"})
    pool_min_size: int = 5
    pool_max_size: int = 25
    slow_query_ms: int = 500
    echo: bool = False


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / ".env").write_text(
            "# shared by every environment\n"
            "APP_ENV=dev\n"
            "ORDERS_SERVICE_NAME=orders\n"
            "ORDERS_LOG_LEVEL=info\n"
            "ORDERS_DATABASE_URL=postgresql://orders:s3cr3t@localhost:5432/orders\n"
            "ORDERS_DB_POOL_MAX_SIZE=10\n",
            encoding="utf-8",
        )
        (root / ".env.dev").write_text(
            "# only when APP_ENV=dev\nORDERS_LOG_LEVEL=debug\nORDERS_DB_ECHO=yes\n",
            encoding="utf-8",
        )
        environ_before = dict(os.environ)

        config = EnvConfig(
            prefix="orders",
            env_file=root / ".env",
            defaults={"db.slow_query_ms": 250, "http.port": 8080},
            overrides={"db.pool_min_size": 2},
            # The process environment is copied at construction; here we pass one
            # explicitly so that the example prints the same thing everywhere.
            environ={"ORDERS_DB_POOL_MAX_SIZE": "40"},
        )
        print("environment:", config.environment, "files:", [p.name for p in config.files])
        print("service     :", config.get_str("service.name"), "(from .env)")
        print("log level   :", config.get_str("LOG_LEVEL"), "(.env.dev beats .env)")
        print("pool max    :", config.get_int("db.pool_max_size"), "(process env beats .env)")
        print("pool min    :", config.get_int("db_pool_min_size"), "(override)")
        print("http port   :", config.get_int("http.port"), "(default)")
        print("echo        :", config.get_bool("DB.ECHO"))

        settings = load_settings(DatabaseSettings, config, prefix="db")
        print("settings    :", settings)
        print("url revealed:", settings.url.reveal().replace("s3cr3t", "<the password>"))

        try:
            config.validate(["service.name", "nats.url", "jwt.public_key"])
        except ConfigurationError as error:
            print("validate    :", error.message)

        broken = EnvConfig(
            prefix="orders", env_file=None, environ={"ORDERS_DB_POOL_MAX_SIZE": "lots"}
        )
        try:
            load_settings(DatabaseSettings, broken, prefix="db")
        except ConfigurationError as error:
            print("load error  :", error.message)

        assert dict(os.environ) == environ_before, "EnvConfig never writes os.environ"


if __name__ == "__main__":
    main()
