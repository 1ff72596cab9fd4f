"""End to end, config -> logger -> database -> events: the orders scenario on real
PostgreSQL + NATS and on the in-memory adapters gives the same outcome."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from adapters.memory import InMemoryConfig
from examples.orders.app import run_demo

pytestmark = pytest.mark.integration

EXPECTED = {
    "place": 201,
    "duplicate": 409,
    "duplicate_body": {
        "status_code": 409,
        "error_code": "CONFLICT",
        "message": "order o-1001 already exists",
    },
    "unknown": 404,
    "projected_orders": 1,
    "request_id_echoed": "req-demo-1",
    "healthy": True,
}


@pytest.fixture
async def fresh_database_url(postgres_url: str) -> AsyncIterator[str]:
    """A new, empty database on the session server, dropped afterwards."""
    name = f"e2e_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield conninfo.make_conninfo(postgres_url, dbname=name)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def run_scenario(
    values: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config = InMemoryConfig({"SERVICE_NAME": "orders", "LOG_LEVEL": "info", **values})
    outcome = await run_demo(config, reason="end-to-end test")
    return outcome, json_lines(capsys.readouterr().out)


def assert_one_request_id_end_to_end(lines: list[dict[str, Any]]) -> None:
    by_message = {line["message"]: line for line in lines if line.get("request_id") == "req-demo-1"}
    assert {"order stored", "order placed", "request completed", "order projected"} <= set(
        by_message
    )
    assert by_message["order projected"]["event_id"] == "order.placed:o-1001"
    assert by_message["order projected"]["attempt"] == 1


class TestSameOutcome:
    async def test_in_memory(self, capsys: pytest.CaptureFixture[str]) -> None:
        """On the in-memory adapters: 201, 409, 404, projected once, healthy."""
        outcome, lines = await run_scenario({"INFRA_ADAPTERS": "memory"}, capsys)
        assert outcome.pop("mode") == "memory"
        assert outcome == EXPECTED
        assert_one_request_id_end_to_end(lines)

    async def test_real_servers(
        self, fresh_database_url: str, nats_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """On real PostgreSQL and NATS JetStream: the very same outcome and log trail."""
        tag = uuid.uuid4().hex[:8]
        outcome, lines = await run_scenario(
            {
                "INFRA_ADAPTERS": "real",
                "DATABASE_URL": fresh_database_url,
                "NATS_URL": nats_url,
                "EVENTS_STREAM": f"E2E_{tag}",
                "EVENTS_PREFIX": f"e2e{tag}",
                "DB_POOL_MIN_SIZE": "1",
                "DB_POOL_MAX_SIZE": "4",
            },
            capsys,
        )
        assert outcome.pop("mode") == "real"
        assert outcome == EXPECTED
        assert_one_request_id_end_to_end(lines)
