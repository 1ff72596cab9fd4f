"""Database: one piece of domain code on the Database port, run on either adapter.

Run from the repository root: ``.venv/bin/python examples/database_example.py``.
Without ``DATABASE_URL`` it runs on :class:`adapters.memory.SqliteDatabase` (in
memory, nothing to install); with ``DATABASE_URL=postgresql://...`` set, on
:class:`adapters.postgres.PostgresDatabase`. The output is the same either way.

The domain code (``Accounts``) sees only ``ports.database``: parameters travel as
``%s`` / ``%(name)s``, a transfer is one transaction, a duplicate e-mail is a
``Conflict``, a rule broken half-way rolls everything back.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.env_config import EnvConfig
from adapters.memory import SqliteDatabase
from adapters.postgres import PostgresDatabase
from adapters.structlog_logger import configure_logging
from domain_errors import Conflict, UnprocessableEntity
from ports.database import Database


class Accounts:
    """Bank accounts on any :class:`~ports.database.Database`."""

    def __init__(self, db: Database, table: str) -> None:
        self.db = db
        self.table = table

    async def create_schema(self) -> None:
        await self.db.execute(
            f"CREATE TABLE {self.table} (id BIGINT PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
            "balance BIGINT NOT NULL CHECK (balance >= 0))"
        )

    async def drop_schema(self) -> None:
        await self.db.execute(f"DROP TABLE IF EXISTS {self.table}")

    async def open(self, account_id: int, email: str, balance: int) -> None:
        await self.db.execute(
            f"INSERT INTO {self.table} (id, email, balance) VALUES (%s, %s, %s)",
            (account_id, email, balance),
        )

    async def balances(self) -> dict[str, int]:
        rows = await self.db.fetch_all(f"SELECT email, balance FROM {self.table} ORDER BY id")
        return {row["email"]: row["balance"] for row in rows}

    async def transfer(self, source: int, target: int, amount: int) -> None:
        """Move ``amount`` in one transaction: both updates or neither."""
        async with self.db.transaction() as tx:
            await tx.execute(
                f"UPDATE {self.table} SET balance = balance + %(amount)s WHERE id = %(id)s",
                {"amount": amount, "id": target},
            )
            left = await tx.fetch_value(
                f"UPDATE {self.table} SET balance = balance - %s WHERE id = %s RETURNING balance",
                (amount, source),
            )
            if left is None:
                raise UnprocessableEntity(f"account {source} does not exist")


async def main() -> None:
    config = EnvConfig(env_file=None, defaults={"SERVICE_NAME": "db-example"})
    log = configure_logging(config)
    db: Database
    if config.is_set("DATABASE_URL"):
        db = PostgresDatabase.from_config(config, logger=log)
    else:
        db = SqliteDatabase.from_config(config, logger=log)
    print(f"using {type(db).__name__}")

    await db.connect()
    await db.health_check()
    accounts = Accounts(db, f"example_accounts_{uuid.uuid4().hex[:8]}")
    await accounts.create_schema()
    try:
        await accounts.open(1, "ada@example.com", 100)
        await accounts.open(2, "alan@example.com", 20)
        try:
            await accounts.open(3, "ada@example.com", 5)
        except Conflict as exc:
            print(f"duplicate e-mail refused: {exc.code} ({exc.message})")

        await accounts.transfer(1, 2, 30)
        print("after transfer:", await accounts.balances())

        try:
            await accounts.transfer(99, 2, 10)  # credit happens first, then the rule fails
        except UnprocessableEntity as exc:
            print(f"transfer refused and rolled back: {exc.message}")
        print("unchanged:", await accounts.balances())
    finally:
        await accounts.drop_schema()
        await db.close()


if __name__ == "__main__":
    asyncio.run(main())
