"""Logger throughput: ours vs tuned structlog vs stdlib + python-json-logger vs orjson.

Run: ``.venv/bin/python bench/logger.py`` (about 30-60 s; ``--quick`` for a smoke run).

Every contender writes the same record (a message, the service, four tags) as one
JSON line to an in-memory sink (BytesIO, or StringIO for stdlib logging, which
writes text), with a flush per line as each of them does in production. Rounds
interleave the contenders and each figure is the best round, to damp the noise
of a shared machine; quote the ratios rather than the absolute numbers.

- ours: ``configure_logging`` (StructlogLogger), JSON format.
- structlog tuned: the configuration structlog's performance docs recommend:
  ``make_filtering_bound_logger``, ``cache_logger_on_first_use``, ``BytesLoggerFactory``,
  ``JSONRenderer(serializer=orjson.dumps)`` (with merge_contextvars, add_log_level,
  format_exc_info, TimeStamper(fmt="iso", utc=True)).
- stdlib: ``logging`` with a StreamHandler and python-json-logger's JsonFormatter.
- ceiling: a function that builds the same dict and writes ``orjson.dumps`` of it.

It also measures the cost of a filtered-out ``debug`` call (level info) for each.
"""

from __future__ import annotations

import gc
import io
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from pythonjsonlogger.json import JsonFormatter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.memory import InMemoryConfig
from adapters.structlog_logger import configure_logging
from ports.context import bind_context

QUICK = "--quick" in sys.argv
BATCH = 2_000 if QUICK else 20_000
ROUNDS = 2 if QUICK else 10
FILTERED_CALLS = 50_000 if QUICK else 1_000_000

TARGET_VS_STRUCTLOG = 1.0
TARGET_VS_STDLIB = 4.0
TARGET_FILTERED_NS = 150.0


class Contender:
    """A way to log one line, and the sink it writes to."""

    def __init__(
        self, name: str, log: Callable[..., Any], debug: Callable[..., Any], sink: Any
    ) -> None:
        self.name = name
        self.log = log
        self.debug = debug
        self.sink = sink
        self.best = float("inf")

    def reset(self) -> None:
        self.sink.seek(0)
        self.sink.truncate()


def ours() -> Contender:
    sink = io.BytesIO()
    config = InMemoryConfig({"SERVICE_NAME": "bench", "LOG_LEVEL": "info"})
    log = configure_logging(config, stream=sink)
    return Contender("ours (StructlogLogger)", log.info, log.debug, sink)


def structlog_tuned() -> Contender:
    sink = io.BytesIO()
    structlog.configure(
        cache_logger_on_first_use=True,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        logger_factory=structlog.BytesLoggerFactory(file=sink),
    )
    log = structlog.get_logger().bind(service="bench")
    return Contender("structlog tuned", log.info, log.debug, sink)


def stdlib_json() -> Contender:
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{message}", style="{", static_fields={"service": "bench"}
        )
    )
    logger = logging.getLogger("bench.stdlib")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def info(msg: str, **tags: Any) -> None:
        logger.info(msg, extra=tags)

    def debug(msg: str, **tags: Any) -> None:
        logger.debug(msg, extra=tags)

    return Contender("stdlib + python-json-logger", info, debug, sink)


def ceiling() -> Contender:
    sink = io.BytesIO()
    write, flush = sink.write, sink.flush
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE | orjson.OPT_UTC_Z

    def info(msg: str, **tags: Any) -> None:
        event = {
            "timestamp": datetime.now(UTC),
            "level": "info",
            "message": msg,
            "service": "bench",
        }
        event.update(tags)
        write(dumps(event, option=option))
        flush()

    def debug(msg: str, **tags: Any) -> None:
        return None

    return Contender("ceiling (orjson.dumps + write)", info, debug, sink)


def one_round(contender: Contender) -> None:
    log = contender.log
    contender.reset()
    gc.collect()
    start = time.perf_counter()
    for i in range(BATCH):
        log("order placed", order_id="o-1234", amount=42.5, items=i, customer="c-77")
    elapsed = time.perf_counter() - start
    contender.best = min(contender.best, elapsed)


def filtered_ns(debug: Callable[..., Any]) -> float:
    """ns per filtered-out call, with the loop's own cost subtracted."""
    n = FILTERED_CALLS
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            pass
        empty = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(n):
            debug("cache miss", key="k-1")
        best = min(best, time.perf_counter() - start - empty)
    return best / n * 1e9


def check_output(contenders: list[Contender]) -> None:
    """Each contender wrote real JSON lines holding the tags (not a no-op)."""
    for contender in contenders:
        contender.reset()
        contender.log("order placed", order_id="o-1234", amount=42.5, items=1, customer="c-77")
        raw = contender.sink.getvalue()
        line = orjson.loads(raw if isinstance(raw, bytes) else raw.encode())
        assert line["order_id"] == "o-1234", (contender.name, line)
        message = line.get("message", line.get("event"))  # structlog's key is "event"
        assert message == "order placed", (contender.name, line)


def main() -> None:
    contenders = [ours(), structlog_tuned(), stdlib_json(), ceiling()]
    check_output(contenders)
    for contender in contenders:  # warm-up
        one_round(contender)
        contender.best = float("inf")
    started = time.perf_counter()
    for _ in range(ROUNDS):
        for contender in contenders:
            one_round(contender)
    rates = {c.name: BATCH / c.best for c in contenders}
    in_context = contenders[:2]  # request context: ours (ports.context) vs structlog contextvars
    for contender in in_context:
        contender.best = float("inf")
    for _ in range(ROUNDS // 2):
        with bind_context(request_id="req-1", event_id="evt-1"):
            one_round(in_context[0])
        with structlog.contextvars.bound_contextvars(request_id="req-1", event_id="evt-1"):
            one_round(in_context[1])
    context_rates = [BATCH / c.best for c in in_context]
    filtered = {c.name: filtered_ns(c.debug) for c in contenders}

    version = sys.version.split()[0]
    print(f"logger throughput: {BATCH} lines x best of {ROUNDS} rounds, Python {version}")
    print(f"{'contender':34} {'lines/s':>12} {'us/line':>9} {'filtered debug ns':>18}")
    for c in contenders:
        rate = rates[c.name]
        print(f"{c.name:34} {rate:12,.0f} {1e6 / rate:9.2f} {filtered[c.name]:18.1f}")
    mine, tuned, stdlib, top = (rates[c.name] for c in contenders)
    vs_structlog, vs_stdlib = mine / tuned, mine / stdlib
    print()
    print(f"ours / structlog tuned : {vs_structlog:5.2f}x  (target >= {TARGET_VS_STRUCTLOG:.1f}x)")
    print(f"ours / stdlib JSON     : {vs_stdlib:5.2f}x  (target >= {TARGET_VS_STDLIB:.1f}x)")
    print(f"ours / orjson ceiling  : {mine / top:5.2f}x")
    ctx_ours, ctx_tuned = context_rates
    print(
        f"with request context   : ours {ctx_ours:,.0f} lines/s, structlog tuned "
        f"{ctx_tuned:,.0f} lines/s, {ctx_ours / ctx_tuned:.2f}x"
    )
    ours_filtered = filtered[contenders[0].name]
    print(
        f"ours filtered debug    : {ours_filtered:5.1f} ns  (target <= {TARGET_FILTERED_NS:.0f} ns)"
    )
    print(f"(measured in {time.perf_counter() - started:.1f} s)")
    met = (
        vs_structlog >= TARGET_VS_STRUCTLOG
        and vs_stdlib >= TARGET_VS_STDLIB
        and ours_filtered <= TARGET_FILTERED_NS
    )
    print("targets:", "met" if met else "NOT met")


if __name__ == "__main__":
    main()
