"""The orders example on the in-memory adapters: use cases, HTTP edge, projection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.memory import InMemoryEventBus, SqliteDatabase
from adapters.outbox import Inbox, OutboxRelay, SqlOutbox, install
from domain_errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from examples.orders.app import migrate_schema
from examples.orders.domain import OrderService, TotalsProjection
from examples.orders.http import create_app
from ports.context import bind_context
from ports.events import Event
from testing.fakes import FakeClock, FlakyPublisher, FlakySubscriber, RecordingLogger


class World:
    """The service wired to in-memory adapters, as the composition root wires it: the
    outbox on the SQLite fake, a relay driven by ``flush()``, the projection through
    the inbox."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.log = RecordingLogger()
        self.db = SqliteDatabase()
        self.bus = InMemoryEventBus(clock=self.clock, logger=self.log)
        self.flaky = FlakyPublisher(self.bus, clock=self.clock)
        self.outbox = SqlOutbox(self.db, clock=self.clock)
        self.relay = OutboxRelay(self.db, self.flaky, logger=self.log, clock=self.clock)
        self.inbox = Inbox(self.db, clock=self.clock)
        self.projection = self.inbox.idempotent(TotalsProjection(self.log), durable="order-totals")
        self.service = OrderService(self.db, self.outbox, self.log, self.clock)

    async def start(self) -> None:
        await self.db.connect()
        await install(self.db, logger=self.log)
        await migrate_schema(self.db, self.log)
        await self.bus.subscribe("order.placed", self.projection, durable="order-totals")

    async def flush(self) -> int:
        """Publish what committed (the relay's pass), then deliver it."""
        published = await self.relay.run_once()
        await self.bus.run_until_idle()
        return published

    async def stop(self) -> None:
        await self.bus.close()
        await self.db.close()

    async def place(self, order_id: str, org: str = "org-1", amount: int = 100) -> None:
        await self.service.place_order(
            order_id=order_id, organization_id=org, customer="Ada", amount_cents=amount
        )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    await w.start()
    yield w
    await w.stop()


class TestPlaceOrder:
    async def test_order_is_stored_published_and_projected(self, world: World) -> None:
        """A placed order is readable, in the outbox until the relay's pass, then
        published once and counted by the projection."""
        await world.place("o-1", amount=250)
        order = await world.service.get_order("o-1")
        assert (order.id, order.amount_cents) == ("o-1", 250)
        assert world.bus.published == []  # placing an order never talks to the broker
        assert await world.flush() == 1
        assert [e.id for e in world.bus.published] == ["order.placed:o-1"]
        totals = await world.service.totals("org-1")
        assert (totals.orders, totals.amount_cents) == (1, 250)

    async def test_duplicate_order_is_conflict_and_publishes_nothing(self, world: World) -> None:
        """Placing an existing id raises Conflict and stores or publishes nothing new."""
        await world.place("o-1")
        with pytest.raises(Conflict, match="o-1 already exists"):
            await world.place("o-1", amount=999)
        assert await world.flush() == 1
        assert len(world.bus.published) == 1
        assert (await world.service.get_order("o-1")).amount_cents == 100

    async def test_unknown_order_is_not_found(self, world: World) -> None:
        """Reading an id that was never placed raises NotFound naming it."""
        with pytest.raises(NotFound, match="o-404"):
            await world.service.get_order("o-404")

    @pytest.mark.parametrize(
        ("field", "value"),
        [("order_id", ""), ("customer", None), ("amount_cents", 0), ("amount_cents", True)],
    )
    async def test_bad_input_is_bad_request(self, world: World, field: str, value: object) -> None:
        """Invalid input raises BadRequest naming the field, and nothing is stored."""
        args: dict[str, object] = {
            "order_id": "o-1",
            "organization_id": "org-1",
            "customer": "Ada",
            "amount_cents": 1,
        }
        args[field] = value
        with pytest.raises(BadRequest) as info:
            await world.service.place_order(**args)
        assert info.value.details["field"] == field
        assert await world.flush() == 0
        assert world.bus.published == []


class TestProjection:
    async def test_redelivered_event_is_counted_once(self, world: World) -> None:
        """Handling the same event twice (at-least-once delivery) counts it once: the
        inbox records its id in the projection's transaction."""
        projection = world.projection
        event = Event(
            id="order.placed:o-9",
            type="order.placed",
            source="t",
            organization_id="org-2",
            data={"id": "o-9", "amount_cents": 5},
        )
        await projection(event)
        await projection(event)
        totals = await world.service.totals("org-2")
        assert (totals.orders, totals.amount_cents) == (1, 5)
        assert await world.inbox.processed("order-totals", event.id)
        assert len([r for r in world.log.records if r.message == "order projected"]) == 1

    async def test_totals_past_the_integer_range_are_counted(self, world: World) -> None:
        """Two orders of 1.5 billion cents for one organization: the total (past 2^31)
        is counted, never dead-lettered as an overflow."""
        await world.place("o-big-1", amount=1_500_000_000)
        await world.place("o-big-2", amount=1_500_000_000)
        assert await world.flush() == 2
        totals = await world.service.totals("org-1")
        assert (totals.orders, totals.amount_cents) == (2, 3_000_000_000)
        assert world.bus.dead_letters == []

    async def test_domain_has_no_dedupe_table(self, world: World) -> None:
        """The service's migrations leave no hand-written table of handled events."""
        names = await world.db.fetch_all("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert "processed_events" not in {row["name"] for row in names}

    async def test_malformed_event_is_dead_lettered(self, world: World) -> None:
        """An order.placed without an amount is rejected to the dead letters at once."""
        await world.bus.publish(
            Event(type="order.placed", source="t", organization_id="org-3", data={"id": "x"})
        )
        await world.bus.run_until_idle()
        assert [d.reason for d in world.bus.dead_letters] == ["rejected"]
        assert (await world.service.totals("org-3")).orders == 0

    async def test_request_id_flows_from_request_to_handler(self, world: World) -> None:
        """The request id bound at the edge is on the DB-write log line and the handler's."""
        with bind_context(request_id="req-42"):
            await world.place("o-1")
        await world.flush()
        stored = world.log.assert_logged("order stored")
        projected = world.log.assert_logged("order projected")
        assert stored.context["request_id"] == projected.context["request_id"] == "req-42"
        assert projected.context["event_id"] == "order.placed:o-1"


class TestHttp:
    async def test_http_statuses_and_bodies(self, world: World) -> None:
        """201 for a new order, 409 for its duplicate, 404 unknown, 400 bad JSON."""

        async def health() -> dict[str, object]:
            return {"healthy": True}

        app = create_app(world.service, logger=world.log, health=health)
        transport = httpx.ASGITransport(app=app)
        order = {"id": "o-1", "organization_id": "org-1", "customer": "Ada", "amount_cents": 7}
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            created = await http.post("/orders", json=order, headers={"X-Request-ID": "r-1"})
            duplicate = await http.post("/orders", json=order)
            fetched = await http.get("/orders/o-1")
            missing = await http.get("/orders/nope")
            bad = await http.post("/orders", content=b"{not json")
            not_object = await http.post("/orders", json=[1])
            no_route = await http.delete("/orders/o-1")
            totals = await http.get("/organizations/org-1/totals")
            healthy = await http.get("/health")
        assert created.status_code == 201
        assert created.headers["x-request-id"] == "r-1"
        assert fetched.json()["amount_cents"] == 7
        assert duplicate.status_code == 409
        assert duplicate.json()["error_code"] == "CONFLICT"
        assert (missing.status_code, bad.status_code, not_object.status_code) == (404, 400, 400)
        assert no_route.status_code == 404
        assert totals.json() == {"organization_id": "org-1", "orders": 0, "amount_cents": 0}
        assert healthy.status_code == 200


orders = st.lists(
    st.tuples(
        st.sampled_from(["o-1", "o-2", "o-3", "o-4"]),
        st.sampled_from(["a", "b"]),
        st.integers(1, 1000),
    ),
    max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(placements=orders)
async def test_totals_equal_first_placement_of_each_id(
    placements: list[tuple[str, str, int]],
) -> None:
    """For any sequence of placements (with repeated ids), the projection counts each id
    once, with the amount of its first placement, under its organization."""
    world = World()
    await world.start()
    try:
        expected: dict[str, tuple[int, int]] = {}
        seen: set[str] = set()
        for order_id, org, amount in placements:
            try:
                await world.place(order_id, org, amount)
            except Conflict:
                assert order_id in seen
                continue
            seen.add(order_id)
            count, total = expected.get(org, (0, 0))
            expected[org] = (count + 1, total + amount)
        await world.flush()
        await world.flush()  # a second pass publishes nothing again
        assert len(world.bus.published) == len(seen)
        for org in ("a", "b"):
            totals = await world.service.totals(org)
            assert (totals.orders, totals.amount_cents) == expected.get(org, (0, 0))
    finally:
        await world.stop()


class TestFaults:
    async def test_broker_down_does_not_fail_or_slow_orders(self, world: World) -> None:
        """With the broker failing every publish, orders are still placed at once (the
        broker is never called while placing); the relay's passes fail and keep the
        events; once the broker is back, each order is published and projected once."""
        world.flaky.fail_next(3, error=ServiceUnavailable)
        began = world.clock.monotonic()
        for n in range(20):
            await world.place(f"o-{n}", amount=n + 1)
        assert world.flaky.calls == []  # placing never reached the publisher
        assert world.clock.monotonic() == began  # nor waited on anything
        for _ in range(3):
            with pytest.raises(ServiceUnavailable):
                await world.flush()
        assert world.bus.published == []
        world.clock.advance(5)
        assert await world.relay.lag() == 5.0  # the oldest unsent order's age
        assert await world.flush() == 20  # the broker is back
        assert sorted(e.id for e in world.bus.published) == sorted(
            f"order.placed:o-{n}" for n in range(20)
        )
        totals = await world.service.totals("org-1")
        assert (totals.orders, totals.amount_cents) == (20, sum(range(1, 21)))
        assert await world.relay.lag() == 0.0

    async def test_rolled_back_order_publishes_nothing(self, world: World) -> None:
        """An order whose transaction rolls back after the event was added to the outbox
        is neither stored nor published (no phantom order in the projection)."""

        async def add_then_fail() -> None:
            async with world.db.transaction() as tx:
                await world.outbox.add(
                    tx,
                    Event(type="order.placed", source="t", organization_id="org-1", data={}),
                )
                raise LookupError("the request failed after outbox.add")

        with pytest.raises(LookupError):
            await add_then_fail()
        assert await world.flush() == 0
        assert world.bus.published == []

    async def test_failing_handler_is_retried_until_it_succeeds(self) -> None:
        """A projection that fails twice is redelivered after its backoff and counts once."""
        w = World()
        await w.db.connect()
        await install(w.db, logger=w.log)
        await migrate_schema(w.db, w.log)
        flaky = FlakySubscriber(w.bus)
        flaky.fail_next(2)
        await flaky.subscribe("order.placed", w.projection, durable="t", backoff=(1.0,))
        try:
            await w.place("o-1")
            await w.relay.run_once()
            for _ in range(3):
                await w.bus.run_until_idle()
                w.clock.advance(1.0)
            await w.bus.run_until_idle()
            assert flaky.deliveries == {"order.placed:o-1": 3}
            assert (await w.service.totals("org-1")).orders == 1
        finally:
            await w.stop()
