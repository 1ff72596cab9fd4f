"""The orders domain: depends on ports and domain_errors only (checked by import-linter).

Placing an order writes it and its ``order.placed`` event (``outbox.add``, the
:class:`ports.outbox.Outbox` port) in one transaction: the event is published by the
outbox relay once the transaction commits, never if it rolls back, and placing an
order never talks to the broker (a broker outage neither fails nor slows it). The
event id is derived from the order id. The projection, :class:`TotalsProjection`, is
a ``fn(event, tx)`` that keeps per-organization totals with its writes in ``tx``; the
composition root (``app.py``) runs it through ``adapters.outbox.Inbox(...).idempotent``,
which records the event id in the same transaction, so a redelivered event is
counted once. The tables are created by the versioned SQL files in ``migrations/``
(applied by the composition root with ``adapters.migrations.migrate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain_errors import BadRequest, Conflict, not_found
from ports.clock import Clock
from ports.database import Database, Row, Transaction
from ports.events import Event, Reject
from ports.logger import Logger
from ports.outbox import Outbox

__all__ = ["Order", "OrderService", "OrderTotals", "TotalsProjection"]

ORDER_PLACED = "order.placed"
SOURCE = "orders-service"


@dataclass(frozen=True, slots=True)
class Order:
    """A placed order."""

    id: str
    organization_id: str
    customer: str
    amount_cents: int
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> Order:
        return cls(
            id=row["id"],
            organization_id=row["organization_id"],
            customer=row["customer"],
            amount_cents=int(row["amount_cents"]),
            created_at=str(row["created_at"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "organization_id": self.organization_id,
            "customer": self.customer,
            "amount_cents": self.amount_cents,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class OrderTotals:
    """The projection's view of one organization."""

    organization_id: str
    orders: int
    amount_cents: int


def _require_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise BadRequest(f"{name} must be a non-empty string", details={"field": name})
    return value


class OrderService:
    """Use cases: place an order, read one back, read an organization's totals."""

    def __init__(self, db: Database, outbox: Outbox, logger: Logger, clock: Clock) -> None:
        self._db = db
        self._outbox = outbox
        self._log = logger
        self._clock = clock

    async def place_order(
        self, *, order_id: Any, organization_id: Any, customer: Any, amount_cents: Any
    ) -> Order:
        """Store the order and its ``order.placed`` event in one transaction (published
        once it commits); ``Conflict`` if the id exists."""
        order = Order(
            id=_require_text("order_id", order_id),
            organization_id=_require_text("organization_id", organization_id),
            customer=_require_text("customer", customer),
            amount_cents=_positive_int("amount_cents", amount_cents),
            created_at=self._clock.now().isoformat(),
        )
        try:
            async with self._db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO orders (id, organization_id, customer, amount_cents, created_at)"
                    " VALUES (%(id)s, %(organization_id)s, %(customer)s, %(amount_cents)s,"
                    " %(created_at)s)",
                    order.to_dict(),
                )
                self._log.info("order stored", order_id=order.id)
                await self._outbox.add(
                    tx,
                    Event(
                        id=f"{ORDER_PLACED}:{order.id}",
                        type=ORDER_PLACED,
                        source=SOURCE,
                        organization_id=order.organization_id,
                        data=order.to_dict(),
                    ),
                )
        except Conflict as exc:
            raise Conflict(
                f"order {order.id} already exists", details={"order_id": order.id}
            ) from exc
        self._log.info("order placed", order_id=order.id)
        return order

    async def get_order(self, order_id: str) -> Order:
        """The order with this id; ``NotFound`` if there is none."""
        row = await self._db.fetch_one(
            "SELECT id, organization_id, customer, amount_cents, created_at"
            " FROM orders WHERE id = %s",
            (order_id,),
        )
        if row is None:
            raise not_found("order", order_id)
        return Order.from_row(row)

    async def totals(self, organization_id: str) -> OrderTotals:
        """The projection's totals for an organization (zeros if it has none yet)."""
        row = await self._db.fetch_one(
            "SELECT organization_id, orders, amount_cents FROM organization_totals"
            " WHERE organization_id = %s",
            (organization_id,),
        )
        if row is None:
            return OrderTotals(organization_id, 0, 0)
        return OrderTotals(row["organization_id"], int(row["orders"]), int(row["amount_cents"]))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise BadRequest(f"{name} must be a positive integer", details={"field": name})
    return value


class TotalsProjection:
    """Handles ``order.placed`` in the caller's transaction: adds the order to its
    organization's totals.

    A ``fn(event, tx)``: the composition root makes it idempotent (an inbox records
    the event id in ``tx``), so it holds no dedupe table of its own.
    """

    def __init__(self, logger: Logger) -> None:
        self._log = logger

    async def __call__(self, event: Event, tx: Transaction) -> None:
        amount = event.data.get("amount_cents")
        if isinstance(amount, bool) or not isinstance(amount, int):
            # Retrying cannot fix a malformed event: dead-letter it at once.
            raise Reject("order.placed without an integer amount_cents")
        await tx.execute(
            "INSERT INTO organization_totals (organization_id, orders, amount_cents)"
            " VALUES (%s, 1, %s) ON CONFLICT (organization_id) DO UPDATE SET"
            " orders = organization_totals.orders + 1,"
            " amount_cents = organization_totals.amount_cents + excluded.amount_cents",
            (event.organization_id, amount),
        )
        self._log.info("order projected", order_id=event.data.get("id"))
