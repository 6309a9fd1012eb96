"""Pipeline throughput as the tables grow, with PostgreSQL's default plan caching or custom plans.

    uv run python scripts/profile_growth.py [--plans auto|force_custom_plan] [--rows 40000]

Creates a throw-away database next to DATABASE_URL's (migrated by alembic), runs batches of 250
creates through `Pipeline.process` (no broker) and prints creates/s for every 5,000 rows. With
`auto` (PostgreSQL's default), asyncpg's prepared lookups switch to a generic plan after five
executions, made while the tables were empty; `force_custom_plan` is what the worker's engine
sets (`worker.db.engine.CUSTOM_PLANS`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

from sqlalchemy.ext.asyncio import create_async_engine

from contracts.commands import CreateCoupon
from tests.support.database import create_database, drop_database
from worker.app.pipeline import Envelope, Pipeline
from worker.db import migrations
from worker.db.unit_of_work import SqlAlchemyUnitOfWork

BATCH = 250
STEP = 5_000


async def main(plans: str, rows: int) -> None:
    admin_url = os.environ.get(
        "DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    url = await create_database(admin_url, prefix="coupon_growth")
    engine = create_async_engine(
        url,
        pool_size=2,
        max_overflow=0,
        connect_args={"server_settings": {"plan_cache_mode": plans}},
    )
    try:
        await migrations.upgrade(engine)
        pipeline = Pipeline(lambda: SqlAlchemyUnitOfWork(engine))
        done = 0
        while done < rows:
            started = time.perf_counter()
            for _ in range(STEP // BATCH):
                batch = [
                    Envelope(str(uuid.uuid4()), CreateCoupon(code=f"C{done + i}", init_count=5))
                    for i in range(BATCH)
                ]
                done += BATCH
                await pipeline.process(batch)
            rate = STEP / (time.perf_counter() - started)
            sys.stdout.write(f"plan_cache_mode={plans} rows {done:7,d}: {rate:6,.0f} creates/s\n")
            sys.stdout.flush()
    finally:
        await engine.dispose()
        await drop_database(admin_url, url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", choices=["auto", "force_custom_plan"], default="auto")
    parser.add_argument("--rows", type=int, default=40_000)
    args = parser.parse_args()
    asyncio.run(main(args.plans, args.rows))
