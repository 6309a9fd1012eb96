"""The soak: a million commands through one worker process, its resident memory printed every
100,000 (issue 22: RSS flat within 10 % from 20,000 to 1,000,000 commands).

    make bench-soak                  # SOAK_ARGS="--commands 200000" for a shorter one

Run once per change of the hot path and stored (`benchmarks/results/soak-<time>.json`, beside it
its raw record `soak-<time>.log`: each RSS reading as a FIGURES line, from which the stored figures
are rebuilt), not in CI: it takes about ten minutes; tests/e2e runs 20,000. Waves of 10,000 like
the issue's soak: creates of new codes, redeems of codes created earlier, 1 % invalid bodies
(dead-lettered), 2 % commands delivered twice under one message_id. Each wave is published
(confirmed), then answered in full, before the next; the worker's RSS is read between waves. A
fresh database and broker names of the run's own, as in `make bench`; the events go to a counting
queue (no outcome is kept here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from aio_pika.abc import AbstractIncomingMessage

from benchmarks.config import RESULTS_DIR, BenchConfig, service_urls
from benchmarks.database import BenchmarkFailed, migrate
from benchmarks.measure import Context
from benchmarks.processes import TargetProcess
from benchmarks.provenance import (
    BENCHMARK_CODE,
    figures_line,
    head,
    parse_figures_line,
    uncommitted,
)
from benchmarks.session import run_phase, write_result
from contracts import names
from contracts.amqp import to_amqp
from contracts.commands import CreateCoupon, RedeemCoupon
from contracts.messages import CommandMessage, command_message
from tests.support.broker import Broker
from tests.support.database import create_database, drop_database
from worker.settings import Settings

FORMAT = 2  # 2: a raw record beside the result (each RSS reading)
WAVE = 10_000
REPORT_EVERY = 100_000
PUBLISH_WINDOW = 500
INVALID = b'{"code": "", "init_count": 0}'


class Counter:
    """Counts the commands the worker answered on the events exchange (by causation id: a
    command delivered twice counts once)."""

    def __init__(self) -> None:
        self.answered: set[str] = set()
        self.changed = asyncio.Event()

    @property
    def events(self) -> int:
        return len(self.answered)

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        causation = (message.headers or {}).get(names.CAUSATION_ID_HEADER)
        if isinstance(causation, str):
            self.answered.add(causation)
        self.changed.set()

    async def wait_for(self, count: int, idle: float, alive: Any) -> None:
        loop = asyncio.get_running_loop()
        last_news = loop.time()
        while self.events < count:
            if loop.time() - last_news > idle or not alive():
                raise BenchmarkFailed(f"{self.events} events of {count}: the worker stalled")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 1.0)
                last_news = loop.time()
            except TimeoutError:
                pass


def wave(start: int, rng: random.Random) -> list[CommandMessage | None]:
    """One wave of commands numbered from `start`: creates of new codes and redeems of codes
    created earlier; 1 % invalid bodies (`None`), 2 % sent twice under one message_id (the same
    message twice in the list)."""
    messages: list[CommandMessage | None] = []
    for n in range(start, start + WAVE):
        roll = rng.random()
        if roll < 0.01:
            messages.append(None)
            continue
        if n % 2 == 0 or start == 0:
            command: CreateCoupon | RedeemCoupon = CreateCoupon(code=f"SOAK-{n}", init_count=3)
        else:
            command = RedeemCoupon(code=f"SOAK-{rng.randrange(0, start, 2)}")
        message = command_message(command, message_id=str(uuid.uuid4()))
        messages.extend([message] * (2 if roll > 0.98 else 1))
    return messages


async def publish(broker: Broker, messages: list[CommandMessage | None]) -> None:
    """Every message of a wave, confirmed, `PUBLISH_WINDOW` at a time."""
    exchange = await broker.ch.get_exchange(broker.topology.commands_exchange, ensure=False)
    sends = [
        broker.send_raw("coupon.create", INVALID)
        if message is None
        else exchange.publish(to_amqp(message), message.routing_key, mandatory=True)
        for message in messages
    ]
    for first in range(0, len(sends), PUBLISH_WINDOW):
        await asyncio.gather(*sends[first : first + PUBLISH_WINDOW])


async def soak(context: Context, commands: int) -> dict[str, Any]:
    """One run in `context` (benchmarks/session.py holds the service lock and keeps the logs):
    the result, each RSS reading written to its raw record."""
    started_at = datetime.now(UTC)
    amqp_url, admin_url = context.config.amqp_url, context.config.admin_database_url
    prefix = f"soak{uuid.uuid4().hex[:8]}-"
    broker = Broker(amqp_url, prefix)
    await broker.open()
    await broker.declare(Settings.model_validate({"name_prefix": prefix}))
    database_url = await create_database(admin_url, "coupon_soak")
    counter = Counter()
    events = await broker.ch.declare_queue(f"{prefix}soak.events", exclusive=True)
    await events.bind(broker.topology.events_exchange, routing_key="#")
    await events.consume(counter.on_event, no_ack=True)
    log = context.logs / "worker.log"
    worker = TargetProcess.worker(
        {"AMQP_URL": amqp_url, "DATABASE_URL": database_url, "WORKER_NAME_PREFIX": prefix}, log
    )
    rows: list[dict[str, Any]] = []
    try:
        await migrate(database_url, amqp_url)
        worker.start()
        await worker.wait_ready()
        assert worker.process is not None
        watched = psutil.Process(worker.process.pid)
        rng = random.Random(20261205)
        expected = 0
        sent = 0
        started = since = time.perf_counter()
        while sent < commands:
            messages = wave(sent, rng)
            await publish(broker, messages)
            # The worker answers every valid command once, however often it is delivered.
            expected += len({m.message_id for m in messages if m is not None})
            await counter.wait_for(expected, idle=60, alive=worker.running)
            sent += WAVE
            if sent in (20_000, WAVE) or sent % REPORT_EVERY == 0:
                now = time.perf_counter()
                row = {
                    "commands": sent,
                    "rss_mib": round(watched.memory_info().rss / 2**20, 1),
                    "seconds": round(now - started, 1),
                    "rate_since_last": round(
                        (sent - (rows[-1]["commands"] if rows else 0)) / (now - since)
                    ),
                }
                since = now
                rows.append(row)
                context.record.append(figures_line("soak", row))
                sys.stdout.write(
                    f"{sent:>9,} commands  RSS {row['rss_mib']:6.1f} MiB  "
                    f"{row['rate_since_last']:>5,}/s since the last line\n"
                )
                sys.stdout.flush()
        await worker.stop()
    finally:
        worker.kill()
        await broker.delete_topology()
        await broker.close()
        await drop_database(admin_url, database_url)
    return {
        "format": FORMAT,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": head(),
        "uncommitted_code_under_test": uncommitted(BENCHMARK_CODE),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "commands": commands,
        "wave": WAVE,
        **rebuild(context.record),
        "events": counter.events,
    }


def rebuild(record: list[str]) -> dict[str, Any]:
    """The RSS rows and their growth from the raw record (the `soak` FIGURES lines): what the
    result file stores, and what tests/unit/test_phase_tables.py recomputes from the kept log."""
    rows: list[dict[str, Any]] = []
    for line in record:
        if line.startswith("FIGURES [soak] "):
            _, figures = parse_figures_line(line)
            rows.append(
                {
                    "commands": int(figures["commands"]),
                    "rss_mib": float(figures["rss_mib"]),
                    "seconds": float(figures["seconds"]),
                    "rate_since_last": int(figures["rate_since_last"]),
                }
            )
    base = next((r for r in rows if r["commands"] >= 20_000), None)
    if base is None:
        raise ValueError("the raw record holds no RSS reading at 20,000 commands or more")
    return {"rows": rows, "rss_growth_from_20000": round(rows[-1]["rss_mib"] / base["rss_mib"], 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.commands < 20_000 or args.commands % WAVE:
        parser.error(f"--commands: 20,000 or more, a multiple of {WAVE:,}")
    config = BenchConfig(*service_urls(), output_dir=args.output_dir)
    result, context = run_phase("soak", config, lambda context: soak(context, args.commands))
    output = write_result(result, context.record, args.output_dir, prefix="soak-")
    growth = result["rss_growth_from_20000"]
    sys.stdout.write(
        f"RSS {growth:.2f}x from 20,000 to {args.commands:,} commands "
        f"({'flat' if growth <= 1.10 else 'growing'}); {output}\n"
    )


if __name__ == "__main__":
    main()
