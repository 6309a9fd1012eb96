"""Where a command's latency goes at a steady rate: the worker in process, timed at each step.

    uv run python scripts/latency_probe.py [--rate 200] [--seconds 10] [--concurrency 2]

Runs `coupon-worker run` in this process (`worker.entrypoints.run.serve`, against a throw-away
database next to DATABASE_URL's and a fresh broker name prefix on AMQP_URL), with wrappers that
time each command at every step: delivered, in a batch, through the pipeline, published and
confirmed. A child process publishes `coupon.create` at `--rate` for `--seconds` and times each
command's event. Prints p50 / p90 / p99 of every step, the slowest commands step by step, and
the garbage collector's pauses. A diagnostic, not a benchmark (`make bench` is that).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvloop

from contracts.names import Topology
from tests.support.database import create_database, drop_database
from worker.app.pipeline import Envelope, Pipeline
from worker.entrypoints import run
from worker.logs import configure_logging
from worker.messaging.batches import BatchRunner
from worker.messaging.intake import Intake
from worker.messaging.publisher import Publisher
from worker.settings import Settings

STEPS = ("sent", "delivered", "batched", "pipeline_start", "pipeline_end", "confirmed", "event")
marks: dict[str, dict[str, float]] = defaultdict(dict)
pauses: list[tuple[int, float]] = []  # (generation, ms)


def mark(message_id: object, step: str) -> None:
    marks[str(message_id)][step] = time.time()


def wrap(cls: type, name: str, before: Callable[..., None], after: Callable[..., None]) -> None:
    """Replace `cls.name` (a coroutine method) with one that calls `before` and `after`."""
    inner = getattr(cls, name)

    async def timed(self: Any, argument: Any) -> Any:
        before(argument)
        result = await inner(self, argument)
        after(argument)
        return result

    setattr(cls, name, timed)


def instrument() -> None:
    def delivered(message: Any) -> None:
        mark(message.message_id, "delivered")
        marks[str(message.message_id)]["sent"] = float(message.headers["sent"])

    def each(step: str, key: Callable[[Any], object]) -> Callable[[Sequence[Any]], None]:
        def at_step(items: Sequence[Any]) -> None:
            for item in items:
                mark(key(item), step)

        return at_step

    nothing: Callable[[Any], None] = lambda _: None  # noqa: E731
    wrap(Intake, "_receive", delivered, nothing)
    wrap(BatchRunner, "run", each("batched", lambda m: m.message_id), nothing)
    envelope_id: Callable[[Envelope], object] = lambda e: e.message_id  # noqa: E731
    wrap(
        Pipeline,
        "process",
        each("pipeline_start", envelope_id),
        each("pipeline_end", envelope_id),
    )
    wrap(Publisher, "publish_outcomes", nothing, each("confirmed", lambda a: a[0].message_id))

    started: dict[str, float] = {}

    def collector(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["at"] = time.perf_counter()
        else:
            pauses.append((int(info["generation"]), 1000 * (time.perf_counter() - started["at"])))

    gc.callbacks.append(collector)


PUBLISHER = r"""
import asyncio, json, sys, time, uuid
import aio_pika

async def main(url, commands, events, rate, seconds, out):
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=False)
    exchange = await channel.get_exchange(commands)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(events, "#")
    arrived = {}
    async def on_event(message):
        arrived.setdefault(message.correlation_id, time.time())
    await queue.consume(on_event, no_ack=True)
    count, start = int(rate * seconds), time.monotonic()
    for i in range(count):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        body = json.dumps({"code": "P" + uuid.uuid4().hex[:20], "init_count": 5}).encode()
        message = aio_pika.Message(
            body, message_id=str(uuid.uuid4()), content_type="application/json",
            headers={"sent": repr(time.time())}, delivery_mode=2,
        )
        await exchange.publish(message, routing_key="coupon.create")
    await asyncio.sleep(2)
    json.dump(arrived, open(out, "w"))
    await connection.close()

asyncio.run(main(*sys.argv[1:4], float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]))
"""


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))]

    return f"p50 {at(0.5):6.2f}  p90 {at(0.9):6.2f}  p99 {at(0.99):6.2f}  max {ordered[-1]:6.2f} ms"


def report(arrived: dict[str, float]) -> str:
    for message_id, at in arrived.items():
        if message_id in marks:
            marks[message_id]["event"] = at
    complete = [m for m in marks.values() if all(step in m for step in STEPS)]
    complete.sort(key=lambda m: m["sent"])
    complete = complete[len(complete) // 20 :]  # warm-up left out, as the benchmark does
    lines = [f"{len(complete)} commands (first 5 % left out)"]
    for before, after in itertools.pairwise(STEPS):
        spans = [1000 * (m[after] - m[before]) for m in complete]
        lines.append(f"{before:>14} -> {after:<14} {quantiles(spans)}")
    whole = [1000 * (m["event"] - m["sent"]) for m in complete]
    lines.append(f"{'sent':>14} -> {'event':<14} {quantiles(whole)}")
    lines.append("slowest, ms after sending: " + " / ".join(STEPS[1:]))
    for m in sorted(complete, key=lambda m: m["event"] - m["sent"])[-5:]:
        lines.append("  " + " ".join(f"{1000 * (m[step] - m['sent']):6.1f}" for step in STEPS[1:]))
    by_generation: dict[int, list[float]] = defaultdict(list)
    for generation, ms in pauses:
        by_generation[generation].append(ms)
    for generation, spans in sorted(by_generation.items()):
        lines.append(
            f"gc generation {generation}: {len(spans)} collections, longest {max(spans):.1f} ms"
        )
    return "\n".join(lines)


async def main(rate: float, seconds: float, concurrency: int) -> str:
    admin_url = os.environ.get(
        "DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    url = await create_database(admin_url, prefix="coupon_probe")
    prefix = f"probe{uuid.uuid4().hex[:8]}-"
    settings = Settings.model_validate(
        {
            "DATABASE_URL": url,
            "AMQP_URL": amqp_url,
            "name_prefix": prefix,
            "log_level": "WARNING",
            "concurrency": concurrency,
        }
    )
    configure_logging(settings.log_format, settings.log_level)
    topology = Topology(prefix)
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    try:
        worker = asyncio.create_task(run.serve(settings, lambda text: text, migrate=True))
        await asyncio.sleep(4)  # started and consuming
        pauses.clear()  # the start-up's own collection (before gc.freeze) is not the run's
        publisher = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PUBLISHER,
            amqp_url,
            topology.commands_exchange,
            topology.events_exchange,
            str(rate),
            str(seconds),
            str(out),
        )
        await publisher.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a clean stop
        await worker
        return report(json.loads(await asyncio.to_thread(out.read_text)))
    finally:
        await asyncio.to_thread(out.unlink, True)
        await drop_database(admin_url, url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    instrument()
    sys.stdout.write(uvloop.run(main(args.rate, args.seconds, args.concurrency)) + "\n")
