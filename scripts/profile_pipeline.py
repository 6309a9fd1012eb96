"""cProfile of the pipeline alone (no broker) over a few thousand commands, on PostgreSQL.

    uv run python scripts/profile_pipeline.py [--batch 100] [--out profile.txt]

Creates a throw-away database next to DATABASE_URL's (migrated by alembic), runs 6,000 commands
(2,000 creates, 3,000 redeems over 500 coupons, 500 redeems of one hot coupon, 500 gets) through
`Pipeline.process` in batches of about `--batch`, and writes the throughput, the share of time
SQLAlchemy spent compiling SQL, and the top functions by own and by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import time
import uuid

from sqlalchemy.ext.asyncio import create_async_engine

from contracts.commands import Command, CreateCoupon, GetCoupon, RedeemCoupon
from tests.support.database import create_database, drop_database
from worker.app.pipeline import Envelope, Pipeline
from worker.db import migrations
from worker.db.unit_of_work import SqlAlchemyUnitOfWork


def workload(batch_size: int) -> list[list[Envelope]]:
    commands: list[Command] = [
        *(CreateCoupon(code=f"C{i}", init_count=5) for i in range(2000)),
        *(RedeemCoupon(code=f"C{i % 500}") for i in range(3000)),
        *(RedeemCoupon(code="C7") for _ in range(500)),
        *(GetCoupon(code=f"C{i}") for i in range(500)),
    ]
    envelopes = [Envelope(str(uuid.uuid4()), command) for command in commands]
    batches: list[list[Envelope]] = []
    start = 0
    while start < len(envelopes):
        size = max(1, batch_size - len(batches) % 7)  # sizes vary, as the consumer's do
        batches.append(envelopes[start : start + size])
        start += size
    return batches


def report(profiler: cProfile.Profile, commands: int, batches: int, elapsed: float) -> str:
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    compiled = [
        (calls, cumulative)
        for (path, _, name), (_, calls, _, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
        if name == "_compiler" and path.endswith("sqlalchemy/sql/elements.py")
    ]
    compiles = sum(calls for calls, _ in compiled)
    compiling = sum(cumulative for _, cumulative in compiled)
    out = io.StringIO()
    out.write(
        f"{commands} commands in {batches} batches: {elapsed:.2f} s, "
        f"{commands / elapsed:.0f} commands/s\n"
        f"profiled {total:.2f} s; SQL compilation (ClauseElement._compiler): {compiles} calls, "
        f"{compiling:.2f} s cumulative = {100 * compiling / total:.1f} %\n"
    )
    for order in ("tottime", "cumulative"):
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(20)
    return out.getvalue()


async def main(batch_size: int) -> str:
    admin_url = os.environ.get(
        "DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    url = await create_database(admin_url, prefix="coupon_profile")
    engine = create_async_engine(url, pool_size=4, max_overflow=0)
    try:
        await migrations.upgrade(engine)
        pipeline = Pipeline(lambda: SqlAlchemyUnitOfWork(engine))
        batches = workload(batch_size)
        await pipeline.process([Envelope("warm-up", GetCoupon(code="none"))])
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        commands = 0
        for batch in batches:
            commands += len(await pipeline.process(batch))
        profiler.disable()
        return report(profiler, commands, len(batches), time.perf_counter() - started)
    finally:
        await engine.dispose()
        await drop_database(admin_url, url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    text = asyncio.run(main(args.batch))
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text)
