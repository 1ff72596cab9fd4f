"""Events benchmark: our NATS adapter next to raw nats-py, and the in-memory bus.

    .venv/bin/python bench/events.py            # starts its own nats-server from the wheel
    NATS_URL=nats://127.0.0.1:4222 .venv/bin/python bench/events.py
    .venv/bin/python bench/events.py --quick    # smaller runs (a smoke test)
    .venv/bin/python bench/events.py --only telemetry --rounds 11   # issue 15 only

Side by side, in one process, on the same server and the same messages:

- publish + PubAck, sequential: ``NatsPublisher.publish`` vs ``js.publish``
- pipelined: ``NatsPublisher.publish_many`` vs ``js.publish_async`` + gather
- consume + ack at concurrency 1 and 16: ``NatsSubscriber`` (continuous pull holding
  at most ``2 x concurrency`` events it has not started, ADR 0024) vs a raw pull
  consumer holding as many (``fetch(2 x c)`` + ``ack``), and, for information, a raw
  push consumer that holds up to 10,000 (callback + ``ack``)
- ``InMemoryEventBus``: publish_many to handled

Raw paths get their payloads and headers pre-encoded (our codec's output), so the
ratios charge our adapter with all of its own work. Each pair runs ``--rounds``
times, the two sides back to back, alternating which goes first. The machine is
shared and noisy, so the ratio reported (and held to its target) is the median of
the per-round ratios: a slow spell hits both sides of a round alike. The best
round of each side is printed too, and the best-to-best ratio beside it.

Telemetry (issue 15, point 5; ADR 0031), on a stream of its own, four sides: raw
nats-py; "off", the bare adapter, which is what ``build_infrastructure`` builds with
``OTEL_ENABLED=false`` (checked at run time: nothing is wrapped); "no-op",
``TracedPublisher`` / ``TracedSubscriber`` on the API's no-op providers; "SDK", the
same on an SDK TracerProvider + BatchSpanProcessor on a dropping exporter and an SDK
MeterProvider (``bench/_otel.py``), whose timed work ends with ``force_flush()``.
Sequential publish + ack is interleaved message by message (message i goes through
the four sides in turn, each call timed); consume + ack at c=1 and c=16 runs the
four sides one after another on the same messages, the order rotating with the
round; a first round warms up and is not counted. Reported: messages/s, off / raw,
and the microseconds per message that no-op and SDK add to off (per round, median
and range). Since off is the bare adapter, what remains of telemetry there is the
trace-context hooks ADR 0031 put in the adapter: a micro-benchmark gives their cost
per publish and per delivery as a share of the per-message time.
FastStream's OpenTelemetry middleware on the same consume path:
``bench/telemetry_faststream.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrs
import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from adapters import event_codec
from adapters._delivery_policy import notify_ran
from adapters._trace_carrier import OUTGOING, carrier_from_headers, incoming
from adapters.memory import InMemoryConfig, InMemoryEventBus
from adapters.nats_events import NatsConnection, NatsPublisher, NatsSubscriber
from adapters.telemetry import TracedPublisher, TracedSubscriber
from bench._otel import SdkProviders, check_off_is_unwrapped, noop_telemetry, sdk_telemetry
from ports.events import Event, Publisher, Subscriber

_ids = itertools.count()
# name, our rates, raw rates (paired by round) or None, target ratio or None
Result = tuple[str, list[float], list[float] | None, float | None]


def events(n: int, type_: str = "bench.tick") -> list[Event]:
    """``n`` small events with fresh ids (so dedupe never kicks in)."""
    return [
        Event(
            type=type_,
            source="bench",
            organization_id="org-1",
            id=f"bench-{next(_ids)}",
            data={"order_id": i, "total": 12.5, "currency": "EUR"},
        )
        for i in range(n)
    ]


def encoded(batch: list[Event], prefix: str) -> list[tuple[str, bytes, dict[str, str]]]:
    out = []
    for event in batch:
        body, headers = event_codec.encode(event)
        out.append((f"{prefix}.{event.type}", body, headers))
    return out


async def timed(work: Callable[[], Awaitable[None]], n: int) -> float:
    began = time.perf_counter()
    await work()
    return n / (time.perf_counter() - began)


async def paired(
    round_: int, n: int, ours: Callable[[], Awaitable[None]], *raws: Callable[[], Awaitable[None]]
) -> list[float]:
    """One round: our side and the raw sides back to back (reversed on odd rounds);
    the rates in the order given."""
    sides = [ours, *raws]
    order = list(range(len(sides)))
    if round_ % 2:
        order.reverse()
    rates = [0.0] * len(sides)
    for i in order:
        rates[i] = await timed(sides[i], n)
    return rates


@contextlib.contextmanager
def server() -> Iterator[str]:
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    from testing.servers import nats_server

    with nats_server() as srv:
        yield srv.url


async def bench_nats(url: str, *, sizes: dict[str, int], rounds: int) -> list[Result]:
    config = InMemoryConfig(
        {
            "NATS_URL": url,
            "EVENTS_STREAM": "BENCH",
            "EVENTS_PREFIX": "bench",
            "EVENTS_DEAD_PREFIX": "bench-dead",
        }
    )
    conn = NatsConnection.from_config(config)
    await conn.connect()
    nc = await nats.connect(url)
    js = nc.jetstream()
    publisher = NatsPublisher(conn)
    prefix = conn.settings.prefix
    results: list[Result] = []

    # -- sequential publish + ack -----------------------------------------------------
    n = sizes["sequential"]
    ours_rates, raw_rates = [], []
    for r in range(rounds):
        batch = events(n)

        async def ours(batch: list[Event] = batch) -> None:
            for event in batch:
                await publisher.publish(event)

        messages = encoded(events(n), prefix)

        async def raw(messages: list[tuple[str, bytes, dict[str, str]]] = messages) -> None:
            for subject, body, headers in messages:
                await js.publish(subject, body, headers=headers)

        ours_rate, raw_rate = await paired(r, n, ours, raw)
        ours_rates.append(ours_rate)
        raw_rates.append(raw_rate)
    results.append(("publish + ack, sequential", ours_rates, raw_rates, 0.9))

    # -- pipelined publish ----------------------------------------------------------------
    n = sizes["pipelined"]
    ours_rates, raw_rates = [], []
    for r in range(rounds):
        batch = events(n)

        async def ours_many(batch: list[Event] = batch) -> None:
            await publisher.publish_many(batch)

        messages = encoded(events(n), prefix)

        async def raw_async(messages: list[tuple[str, bytes, dict[str, str]]] = messages) -> None:
            futures = [await js.publish_async(s, b, headers=h) for s, b, h in messages]
            await asyncio.gather(*futures)

        ours_rate, raw_rate = await paired(r, n, ours_many, raw_async)
        ours_rates.append(ours_rate)
        raw_rates.append(raw_rate)
    results.append(("publish_many vs publish_async", ours_rates, raw_rates, 1.0))

    # -- consume + ack ------------------------------------------------------------------
    # A subscription holds at most 2 x concurrency events it has not started (ADR 0024).
    # Like with like: a raw pull consumer holding the same number (fetch(2 x c), ack
    # each); the raw push callback holds up to 10,000 and is shown for information.
    n = sizes["consume"]
    for concurrency in (1, 16):
        results.extend(await _consume(conn, js, prefix, n, rounds, concurrency))

    await js.delete_stream("BENCH")
    await js.delete_stream("BENCH_DEAD")
    await nc.close()
    await conn.close()
    return results


async def consume_ours(subscriber: Subscriber, subject: str, durable: str, n: int, c: int) -> None:
    """Subscribe (a new durable), handle ``n`` events at concurrency ``c``, stop."""
    done = asyncio.Event()
    count = 0

    async def handler(event: Event) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    sub = await subscriber.subscribe(subject, handler, durable=durable, concurrency=c)
    await done.wait()
    await sub.stop()


async def consume_raw_pull(
    js: JetStreamContext, wire: str, durable: str, stream: str, n: int, c: int
) -> None:
    """A raw pull consumer holding what a subscription at concurrency ``c`` holds:
    ``fetch(2 x c)``, ack each, until ``n`` are acked."""
    psub = await js.pull_subscribe(wire, durable=durable, stream=stream)
    count = 0
    while count < n:
        try:
            msgs = await psub.fetch(2 * c, timeout=1)
        except nats.errors.TimeoutError:
            continue
        await asyncio.gather(*(msg.ack() for msg in msgs))
        count += len(msgs)
    await psub.unsubscribe()


async def _consume(
    conn: NatsConnection, js: JetStreamContext, prefix: str, n: int, rounds: int, c: int
) -> list[Result]:
    publisher, subscriber = NatsPublisher(conn), NatsSubscriber(conn)
    ours_rates: list[float] = []
    pull_rates: list[float] = []
    push_rates: list[float] = []
    for r in range(rounds):
        subject = f"consume{c}x{r}"
        await publisher.publish_many(events(n, f"{subject}.tick"))
        wire = f"{prefix}.{subject}.>"

        async def ours(subject: str = subject, r: int = r) -> None:
            await consume_ours(subscriber, f"{subject}.>", f"ours{c}x{r}", n, c)

        async def raw_pull(wire: str = wire, r: int = r) -> None:
            await consume_raw_pull(js, wire, f"pull{c}x{r}", "BENCH", n, c)

        async def raw_push(wire: str = wire, r: int = r) -> None:
            done = asyncio.Event()
            count = 0

            async def cb(msg: Msg) -> None:
                nonlocal count
                await msg.ack()
                count += 1
                if count == n:
                    done.set()

            config = ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=10_000,
            )
            sub = await js.subscribe(
                wire, durable=f"push{c}x{r}", stream="BENCH", cb=cb, manual_ack=True, config=config
            )
            await done.wait()
            await sub.unsubscribe()

        rates = await paired(r, n, ours, raw_pull, raw_push)
        for rates_of, rate in zip((ours_rates, pull_rates, push_rates), rates, strict=True):
            rates_of.append(rate)
    return [
        (f"consume c={c} vs raw pull fetch({2 * c})", ours_rates, pull_rates, 0.9),
        (f"  (info) c={c} vs raw push, unbounded", ours_rates, push_rates, None),
    ]


async def bench_memory(n: int, rounds: int) -> Result:
    rates = [await _memory_round(n) for _ in range(rounds)]
    return ("InMemoryEventBus publish -> handled", rates, None, None)


async def _memory_round(n: int) -> float:
    bus = InMemoryEventBus()
    done = asyncio.Event()
    count = 0

    async def handler(event: Event) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    await bus.subscribe("bench.>", handler, durable="mem")
    batch = events(n)

    async def run() -> None:
        await bus.publish_many(batch)
        await done.wait()

    rate = await timed(run, n)
    await bus.close()
    return rate


# -- telemetry (issue 15, point 5; ADR 0031) ----------------------------------------------
# Four sides per round, on one server and one stream: raw nats-py (pre-encoded, as
# above), "off" (the bare adapter: what build_infrastructure builds with
# OTEL_ENABLED=false), "no-op" (TracedPublisher / TracedSubscriber on the API's no-op
# providers) and "SDK" (the same on an SDK TracerProvider + BatchSpanProcessor on a
# dropping exporter, and an SDK MeterProvider). The SDK side's timed work ends with
# force_flush(), so the span processor's work on its spans is charged to it.
SIDES: Final = ("raw", "off", "no-op", "SDK")


@attrs.frozen
class TelemetryRow:
    path: str
    rates: dict[str, list[float]]
    """Side -> messages per second, one per round (the rounds paired)."""


def per_message_us(rate: float) -> float:
    return 1e6 / rate


def overheads_us(row: TelemetryRow, side: str, base: str = "off") -> list[float]:
    """Per round: microseconds per message that ``side`` spends beyond ``base``."""
    return [
        per_message_us(a) - per_message_us(b)
        for a, b in zip(row.rates[side], row.rates[base], strict=True)
    ]


def ratios(row: TelemetryRow, side: str, base: str) -> list[float]:
    return [a / b for a, b in zip(row.rates[side], row.rates[base], strict=True)]


def spread(values: list[float], fmt: str) -> str:
    """``median (min..max)``."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"


def publish_calls(
    js: JetStreamContext,
    messages: list[tuple[str, bytes, dict[str, str]]],
    publishers: dict[str, Publisher],
) -> list[Callable[[int], Awaitable[object]]]:
    """One call per side of SIDES: ``call(i)`` publishes that side's message ``i`` (raw
    nats-py: pre-encoded; ours: a fresh event each)."""

    def raw(i: int) -> Awaitable[object]:
        subject, body, headers = messages[i]
        return js.publish(subject, body, headers=headers)

    def ours(publisher: Publisher) -> Callable[[int], Awaitable[object]]:
        batch = events(len(messages))
        return lambda i: publisher.publish(batch[i])

    return [raw, *(ours(publishers[side]) for side in SIDES[1:])]


async def bench_telemetry(
    url: str, *, sizes: dict[str, int], rounds: int, sdk: SdkProviders
) -> list[TelemetryRow]:
    config = InMemoryConfig(
        {
            "NATS_URL": url,
            "EVENTS_STREAM": "BENCHTEL",
            "EVENTS_PREFIX": "benchtel",
            "EVENTS_DEAD_PREFIX": "benchtel-dead",
        }
    )
    conn = NatsConnection.from_config(config)
    await conn.connect()
    nc = await nats.connect(url)
    js = nc.jetstream()
    prefix = conn.settings.prefix
    noop, traced = noop_telemetry(), sdk_telemetry(sdk)
    off_pub, off_sub = NatsPublisher(conn), NatsSubscriber(conn)
    publishers: dict[str, Publisher] = {
        "off": off_pub,
        "no-op": TracedPublisher(off_pub, telemetry=noop),
        "SDK": TracedPublisher(off_pub, telemetry=traced),
    }
    subscribers: dict[str, Subscriber] = {
        "off": off_sub,
        "no-op": TracedSubscriber(off_sub, telemetry=noop),
        "SDK": TracedSubscriber(off_sub, telemetry=traced),
    }
    rows: list[TelemetryRow] = []

    def flushed(work: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await work()
            sdk.tracer_provider.force_flush()

        return run

    # -- publish + ack, sequential: interleaved message by message ---------------------
    # Message i goes through every side in turn (the order rotating with i), each call
    # timed on its own: a slow spell of the shared machine hits all four alike.
    n = sizes["sequential"]
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(-1, rounds):  # round -1 warms up and is not counted
        calls = publish_calls(js, encoded(events(n), prefix), publishers)
        spent = [0.0] * len(calls)
        for i in range(n):
            for k in range(len(calls)):
                j = (i + r + k) % len(calls)
                began = time.perf_counter()
                await calls[j](i)
                spent[j] += time.perf_counter() - began
        began = time.perf_counter()
        sdk.tracer_provider.force_flush()  # the SDK side's spans, through the processor
        spent[SIDES.index("SDK")] += time.perf_counter() - began
        for side, seconds in zip(SIDES, spent if r >= 0 else (), strict=False):
            rates[side].append(n / seconds)
    rows.append(TelemetryRow("publish + ack, sequential", rates))

    # -- consume + ack at concurrency 1 and 16 ------------------------------------------
    n = sizes["consume_traced"]
    for c in (1, 16):
        rates = {side: [] for side in SIDES}
        for r in range(-1, rounds):  # round -1 warms up and is not counted
            subject = f"tel{c}x{r + 1}"
            await off_pub.publish_many(events(n, f"{subject}.tick"))

            async def raw_pull(subject: str = subject, r: int = r, c: int = c) -> None:
                wire = f"{prefix}.{subject}.>"
                await consume_raw_pull(js, wire, f"raw{subject}", "BENCHTEL", n, c)

            def ours_consume(
                side: str, subject: str = subject, c: int = c
            ) -> Callable[[], Awaitable[None]]:
                durable = f"{side.replace('-', '')}{subject}"

                async def run() -> None:
                    await consume_ours(subscribers[side], f"{subject}.>", durable, n, c)

                return run

            sides = [raw_pull, ours_consume("off"), ours_consume("no-op")]
            sides.append(flushed(ours_consume("SDK")))
            # the order rotates with the round: each side runs first, second ... in turn
            order = [(r + k) % len(sides) for k in range(len(sides))]
            measured = [0.0] * len(sides)
            for k in order:
                measured[k] = await timed(sides[k], n)
            for side, rate in zip(SIDES, measured if r >= 0 else (), strict=False):
                rates[side].append(rate)
        rows.append(TelemetryRow(f"consume + ack, c={c}", rates))

    await js.delete_stream("BENCHTEL")
    await js.delete_stream("BENCHTEL_DEAD")
    await nc.close()
    await conn.close()
    return rows


def off_path_residual() -> tuple[float, float]:
    """Nanoseconds per publish and per delivery that ADR 0031's hooks add to the bare
    adapter (telemetry off), best of 7 runs. Per publish: ``OUTGOING.get()`` passed as
    ``encode(..., trace=)`` and tested there (timed on a stand-in with encode's
    signature: timing encode itself with and without it drowns 50 ns in its 5 us).
    Per delivery: ``carrier_from_headers``, ``with incoming(None)`` and
    ``notify_ran(None, "ack")`` (the delivery observer seam)."""
    event = events(1)[0]
    _, headers = event_codec.encode(event)
    lowered = {k.lower(): v for k, v in headers.items()}

    def best_ns(fn: Callable[[], object], number: int = 200_000) -> float:
        return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e9

    def encode(
        event: Event, *, request_id: str | None = None, trace: tuple[str, str | None] | None = None
    ) -> None:
        if trace is not None:
            raise AssertionError("telemetry is off")

    def delivery() -> None:
        with incoming(carrier_from_headers(lowered)):
            notify_ran(None, "ack")

    hooked = best_ns(lambda: encode(event, request_id=None, trace=OUTGOING.get()))
    bare = best_ns(lambda: encode(event, request_id=None))
    return max(0.0, hooked - bare), best_ns(delivery) - best_ns(lambda: None)


def report_telemetry(rows: list[TelemetryRow], residual: tuple[float, float]) -> None:
    print(
        "\nTelemetry (issue 15): messages/s, median of the rounds; ratios and overheads "
        "per round, median (min..max)"
    )
    print(
        f"{'path':28} {'raw':>7} {'off':>7} {'no-op':>7} {'SDK':>7}  {'off/raw':>17}  "
        f"{'no-op - off, us/msg':>21}  {'SDK - off, us/msg':>21}  {'SDK/off':>17}"
    )
    for row in rows:
        med = {side: statistics.median(row.rates[side]) for side in SIDES}
        print(
            f"{row.path:28} "
            + " ".join(f"{med[side]:7,.0f}" for side in SIDES)
            + f"  {spread(ratios(row, 'off', 'raw'), '.2f'):>17}"
            + f"  {spread(overheads_us(row, 'no-op'), '+.1f'):>21}"
            + f"  {spread(overheads_us(row, 'SDK'), '+.1f'):>21}"
            + f"  {spread(ratios(row, 'SDK', 'off'), '.2f'):>17}"
        )
    publish_ns, delivery_ns = residual
    off_us = {row.path: per_message_us(statistics.median(row.rates["off"])) for row in rows}
    print(
        f"\noff vs untraced: nothing is wrapped ({check_off_is_unwrapped()}); what ADR "
        f"0031 left in the bare adapter costs {publish_ns:.0f} ns per publish and "
        f"{delivery_ns:.0f} ns per delivery (micro-benchmark), i.e. "
        + ", ".join(
            f"{(publish_ns if path.startswith('publish') else delivery_ns) / 1e3 / us:.2%} "
            f"of {path} ({us:.1f} us/msg)"
            for path, us in off_us.items()
        )
    )


def report(results: list[Result], memory_target: float) -> bool:
    ok = True
    print(
        f"\n{'path':40} {'ours best':>10} {'raw best':>10} {'best/best':>9} "
        f"{'ratio':>6} {'(rounds)':>11}  target on the ratio"
    )
    for name, ours, raw, target in results:
        if raw is None:
            met = max(ours) >= memory_target
            print(
                f"{name:40} {max(ours):10,.0f} {'-':>10} {'-':>9} {'-':>6} {'':>11}  "
                f">= {memory_target:,.0f}/s {'ok' if met else 'MISSED'}"
            )
        else:
            ratios = [a / b for a, b in zip(ours, raw, strict=True)]
            ratio = statistics.median(ratios)
            met = target is None or ratio >= target
            goal = "(no target)" if target is None else f">= {target}x {'ok' if met else 'MISSED'}"
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(
                f"{name:40} {max(ours):10,.0f} {max(raw):10,.0f} {max(ours) / max(raw):9.2f} "
                f"{ratio:6.2f} {spread:>11}  {goal}"
            )
        ok = ok and met
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs, one round")
    parser.add_argument("--rounds", type=int, help="paired rounds (default 5; 1 with --quick)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["ports", "telemetry"],
        default=["ports", "telemetry"],
        help="sections to run: our ports vs raw nats-py, telemetry (issue 15)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    scale = 10 if args.quick else 1
    sizes = {
        "sequential": 3_000 // scale,
        "pipelined": 30_000 // scale,
        "consume": 20_000 // scale,
        "consume_traced": 5_000 // scale,
    }
    began = time.monotonic()
    ok = True
    with server() as url:
        if "ports" in args.only:
            results = await bench_nats(url, sizes=sizes, rounds=rounds)
            results.append(await bench_memory(200_000 // scale, rounds))
            ok = report(results, memory_target=100_000)
        if "telemetry" in args.only:
            sdk = SdkProviders()
            try:
                rows = await bench_telemetry(url, sizes=sizes, rounds=rounds, sdk=sdk)
            finally:
                sdk.shutdown()
            report_telemetry(rows, off_path_residual())
            print(f"(SDK side: {sdk.exporter.spans:,} spans made, batched and dropped)")
    print(
        f"\n(ratio: median of {rounds} paired rounds, their range in brackets; "
        f"{time.monotonic() - began:.0f} s in all)"
    )
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
