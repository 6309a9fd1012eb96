"""What the worker keeps of every command: the worker in this process, wired exactly as
`coupon-worker run` wires it (`worker.entrypoints.run.serve`), under tracemalloc, fed the
soak's waves (`benchmarks/soak.py`: creates, redeems of earlier codes, 2 % duplicate message
ids, 1 % invalid bodies); heap snapshots after `--first` and after `--last` commands, and what grew
between them, by source line and by object type.

    uv run python scripts/memory_growth.py [--first 50000] [--last 200000] [--frames 1]

A throw-away database and broker names of its own (migrated and declared as the benchmark does);
the events go to a bounded queue of the run's own. Growth that scales with the number of
commands between the two snapshots is what the soak's RSS climb is made of; a few hundred KiB
of caches filling up is not.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path

from benchmarks.soak import WAVE, publish, wave
from tests.support.broker import Broker
from tests.support.database import create_database, drop_database
from worker.addresses import redact_url
from worker.db import migrations
from worker.db.engine import database
from worker.entrypoints.run import serve
from worker.settings import Settings


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drained(broker: Broker) -> None:
    channel = await broker.connection.channel() if broker.connection else None
    assert channel is not None
    try:
        while True:
            queue = await channel.declare_queue(broker.topology.worker_queue, passive=True)
            if not queue.declaration_result.message_count:
                # Delivered is not yet settled: wait until nothing is left unacknowledged
                # (the worker's prefetch returns to the queue only if it fails).
                await asyncio.sleep(1.0)
                again = await channel.declare_queue(broker.topology.worker_queue, passive=True)
                if not again.declaration_result.message_count:
                    return
            await asyncio.sleep(0.2)
    finally:
        await channel.close()


def by_type() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


async def main(first: int, last: int, frames: int) -> None:
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    admin_url = os.environ.get(
        "DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    prefix = f"mem{uuid.uuid4().hex[:8]}-"
    url = await create_database(admin_url, prefix="coupon_memory")
    settings = Settings.model_validate(
        {"AMQP_URL": amqp_url, "DATABASE_URL": url, "name_prefix": prefix, "http_port": None}
    )
    async with database(settings, admin=True) as admin:
        await migrations.upgrade(admin)
    broker = Broker(amqp_url, prefix)
    await broker.open()
    await broker.declare(settings)
    sink = await broker.ch.declare_queue(  # exclusive: gone with this process's connection
        f"{prefix}sink", exclusive=True, arguments={"x-max-length": 1000}
    )
    await sink.bind(broker.topology.events_exchange, "#")
    tracemalloc.start(frames)
    worker = asyncio.create_task(serve(settings, redact_url))
    rng = random.Random(20261205)
    snapshots: dict[int, tuple[tracemalloc.Snapshot, Counter[str], float]] = {}
    try:
        sent = 0
        while sent < last:
            await publish(broker, wave(sent, rng))
            await drained(broker)
            sent += WAVE
            sys.stdout.write(f"{sent:>9,} commands  RSS {rss_mib():6.1f} MiB\n")
            sys.stdout.flush()
            if sent in (first, last):
                gc.collect()
                snapshots[sent] = (tracemalloc.take_snapshot(), by_type(), rss_mib())
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await broker.delete_topology()
        await broker.close()
        await drop_database(admin_url, url)
    (early, early_types, early_rss), (late, late_types, late_rss) = (
        snapshots[first],
        snapshots[last],
    )
    commands = last - first
    sys.stdout.write(
        f"\nRSS {early_rss:.1f} → {late_rss:.1f} MiB over {commands:,} commands "
        f"({(late_rss - early_rss) * 2**20 / commands:.0f} bytes per command)\n"
        "\n== traced allocations that grew, by line\n"
    )
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = late.filter_traces(ignore).compare_to(early.filter_traces(ignore), "lineno")
    for stat in stats[:25]:
        sys.stdout.write(
            f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+9,} blocks  "
            f"{stat.traceback.format()[0].strip()}\n"
        )
    sys.stdout.write("\n== objects that grew in number, by type\n")
    grown = Counter({k: late_types[k] - early_types.get(k, 0) for k in late_types})
    for name, diff in grown.most_common(15):
        sys.stdout.write(f"{diff:+10,}  {name}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=50_000)
    parser.add_argument("--last", type=int, default=200_000)
    parser.add_argument("--frames", type=int, default=1)
    args = parser.parse_args()
    if args.first % WAVE or args.last % WAVE or not 0 < args.first < args.last:
        parser.error(f"--first and --last: multiples of {WAVE}, first < last")
    asyncio.run(main(args.first, args.last, args.frames))
