"""Telemetry cost on the consume path: our TracedSubscriber beside FastStream's
NatsTelemetryMiddleware (issue 15, point 5).

    .venv/bin/pip install -r bench/requirements-faststream.txt   # not a dependency of ours
    .venv/bin/python bench/telemetry_faststream.py [--quick] [--rounds 11]
    NATS_URL=nats://127.0.0.1:4222 .venv/bin/python bench/telemetry_faststream.py

Without FastStream installed the bench says so and exits (code 0).

Each round publishes the same ``n`` messages once (raw nats-py, our codec's body and
headers, plus a W3C ``traceparent`` as a traced producer would send: both sides read
it and continue that trace with one process span) and consumes them four times, each
side with its own durable pull consumer on the one stream, acking every message:

- ours off: ``NatsSubscriber`` (what ``OTEL_ENABLED=false`` builds);
- ours SDK: ``TracedSubscriber`` around it;
- FastStream plain: a ``NatsBroker`` pull subscriber, ``logger=None`` (we log nothing
  per message either), handler ``async def handle(body: dict[str, Any])``;
- FastStream SDK: the same broker type with ``NatsTelemetryMiddleware``.

Concurrency 1: ours holds 2 messages it has not started (ADR 0024) and runs one at a
time; FastStream ``PullSub(batch_size=1)``. Concurrency 16: ours holds 32;
FastStream ``PullSub(batch_size=32)`` with ``max_workers=16``. Their throughputs
differ for many reasons (decoding, validation, acking); what we compare is what
telemetry adds to each: microseconds per message, SDK side minus plain side, per round.
Both SDK sides share one SDK set-up (``bench/_otel.py``: BatchSpanProcessor on a
dropping exporter, MeterProvider with an uncollected in-memory reader), and each SDK
side's timed work ends with ``force_flush()`` so the span processor's work is charged
to it. The order of the four sides rotates with the round; the median of the
per-round figures is reported, with the range.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
from nats.js import JetStreamContext

from adapters.memory import InMemoryConfig
from adapters.nats_events import NatsConnection, NatsSubscriber
from adapters.telemetry import TracedSubscriber
from bench._otel import SdkProviders, check_off_is_unwrapped, sdk_telemetry
from bench.events import consume_ours, encoded, events, server, timed
from ports.events import Subscriber

SIDES: Final = ("ours off", "ours SDK", "FastStream plain", "FastStream SDK")
STREAM: Final = "BENCHFS"


def traced_messages(prefix: str, subject: str, n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """``n`` of our encoded events, each with a traceparent of its own (sampled)."""
    out = []
    for subject_, body, headers in encoded(events(n, f"{subject}.tick"), prefix):
        trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
        out.append((subject_, body, {**headers, "traceparent": f"00-{trace_id}-{span_id}-01"}))
    return out


async def publish(js: JetStreamContext, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
    acks = [await js.publish_async(s, b, headers=h) for s, b, h in messages]
    await asyncio.gather(*acks)


async def consume_faststream(broker: Any, wire: str, durable: str, n: int, c: int) -> None:
    """Add a pull subscriber to the started ``broker``, handle ``n`` messages, stop it."""
    from faststream.nats import JStream, PullSub

    done = asyncio.Event()
    count = 0

    async def handle(body: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    options: dict[str, Any] = {"pull_sub": PullSub(batch_size=1 if c == 1 else 2 * c)}
    if c > 1:
        options["max_workers"] = c
    sub = broker.subscriber(
        wire,
        stream=JStream(name=STREAM, declare=False),
        durable=durable,
        persistent=False,
        **options,
    )
    sub(handle)
    await sub.start()
    await done.wait()
    await sub.stop()


async def bench(
    url: str, *, n: int, rounds: int, sdk: SdkProviders
) -> dict[int, dict[str, list[float]]]:
    from faststream.nats import NatsBroker
    from faststream.nats.opentelemetry import NatsTelemetryMiddleware

    config = InMemoryConfig(
        {
            "NATS_URL": url,
            "EVENTS_STREAM": STREAM,
            "EVENTS_PREFIX": "benchfs",
            "EVENTS_DEAD_PREFIX": "benchfs-dead",
        }
    )
    conn = NatsConnection.from_config(config)
    await conn.connect()  # creates the stream
    nc = await nats.connect(url)
    js = nc.jetstream()
    prefix = conn.settings.prefix
    off = NatsSubscriber(conn)
    subscribers: dict[str, Subscriber] = {
        "ours off": off,
        "ours SDK": TracedSubscriber(off, telemetry=sdk_telemetry(sdk)),
    }
    middleware = NatsTelemetryMiddleware(
        tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
    )
    brokers = {
        "FastStream plain": NatsBroker(url, logger=None),
        "FastStream SDK": NatsBroker(url, logger=None, middlewares=(middleware,)),
    }
    for broker in brokers.values():
        await broker.start()

    def side(name: str, subject: str, c: int) -> Callable[[], Awaitable[None]]:
        durable = name.replace(" ", "") + subject

        async def run() -> None:
            if name in subscribers:
                await consume_ours(subscribers[name], f"{subject}.>", durable, n, c)
            else:
                await consume_faststream(brokers[name], f"{prefix}.{subject}.>", durable, n, c)
            if name.endswith("SDK"):
                sdk.tracer_provider.force_flush()

        return run

    results: dict[int, dict[str, list[float]]] = {}
    for c in (1, 16):
        rates: dict[str, list[float]] = {name: [] for name in SIDES}
        for r in range(-1, rounds):  # round -1 warms up and is not counted
            subject = f"fs{c}x{r + 1}"
            await publish(js, traced_messages(prefix, subject, n))
            measured = [0.0] * len(SIDES)
            for k in range(len(SIDES)):
                i = (r + k) % len(SIDES)
                measured[i] = await timed(side(SIDES[i], subject, c), n)
            if r >= 0:
                for name, rate in zip(SIDES, measured, strict=True):
                    rates[name].append(rate)
                print(
                    f"  c={c:<2} round {r + 1:2}: "
                    + "  ".join(
                        f"{name} {rate:7,.0f}/s" for name, rate in zip(SIDES, measured, strict=True)
                    ),
                    flush=True,
                )
        results[c] = rates

    for broker in brokers.values():
        await broker.stop()
    await js.delete_stream(STREAM)
    await js.delete_stream(f"{STREAM}_DEAD")
    await nc.close()
    await conn.close()
    return results


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"


def report(results: dict[int, dict[str, list[float]]]) -> None:
    print(
        "\nConsume + ack, messages/s (median of the rounds); telemetry's cost per message, "
        "SDK side minus plain side per round: median (min..max)"
    )
    print(
        f"{'path':14} {'ours off':>9} {'ours SDK':>9} {'ours +us/msg':>22} {'SDK/off':>17}   "
        f"{'FS plain':>9} {'FS SDK':>9} {'FS +us/msg':>22} {'SDK/plain':>17}"
    )
    for c, rates in results.items():
        med = {name: statistics.median(rates[name]) for name in SIDES}

        def extra(traced: str, plain: str, rates: dict[str, list[float]] = rates) -> list[float]:
            return [1e6 / a - 1e6 / b for a, b in zip(rates[traced], rates[plain], strict=True)]

        def ratio(traced: str, plain: str, rates: dict[str, list[float]] = rates) -> list[float]:
            return [a / b for a, b in zip(rates[traced], rates[plain], strict=True)]

        print(
            f"{f'consume c={c}':14} {med['ours off']:9,.0f} {med['ours SDK']:9,.0f} "
            f"{spread(extra('ours SDK', 'ours off'), '+.1f'):>22} "
            f"{spread(ratio('ours SDK', 'ours off'), '.2f'):>17}   "
            f"{med['FastStream plain']:9,.0f} {med['FastStream SDK']:9,.0f} "
            f"{spread(extra('FastStream SDK', 'FastStream plain'), '+.1f'):>22} "
            f"{spread(ratio('FastStream SDK', 'FastStream plain'), '.2f'):>17}"
        )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 messages, one round")
    parser.add_argument("--rounds", type=int, help="paired rounds (default 11; 1 with --quick)")
    parser.add_argument("--messages", type=int, help="per round and side (default 5000)")
    args = parser.parse_args()
    if importlib.util.find_spec("faststream") is None:
        print(
            "FastStream is not installed: skipping the FastStream rows. To run them:\n"
            "    .venv/bin/pip install -r bench/requirements-faststream.txt"
        )
        return 0
    rounds = args.rounds or (1 if args.quick else 11)
    n = args.messages or (500 if args.quick else 5_000)
    print(f"FastStream {importlib.metadata.version('faststream')}; {check_off_is_unwrapped()}")
    began = time.monotonic()
    sdk = SdkProviders()
    try:
        with server() as url:
            results = await bench(url, n=n, rounds=rounds, sdk=sdk)
    finally:
        sdk.shutdown()
    report(results)
    consumed = 2 * (rounds + 1) * n  # per side: two concurrencies, a warm-up round each
    print(
        "spans per message consumed (by instrumentation scope): "
        + ", ".join(
            f"{scope} {count / consumed:.2f}" for scope, count in sdk.exporter.by_scope.items()
        )
    )
    print(
        f"\n({rounds} rounds of {n:,} messages per side; {time.monotonic() - began:.0f} s in all)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
