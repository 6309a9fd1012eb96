"""EXPLAIN (ANALYZE, BUFFERS) of the worker's two statements for a batch, on grown tables and on
empty ones side by side: where a batch's time goes as `processed_command` and `coupon` grow.

    uv run python -m benchmarks.growth --keep            # leaves the grown database, names it
    uv run python scripts/explain_growth.py DATABASE_URL [--batches 5] [--size 250]

For each kind of batch (250 redeems of coupons drawn from the grown pool, 250 creates of new
codes), `--batches` batches one after another, each in a transaction rolled back (nothing
stays): `LOCK_AND_LOOK_UP` then `WRITE_ALL` (worker/db/repositories.py), compiled as the worker
compiles them and run with the worker's `plan_cache_mode`. Printed: each statement's execution
time and shared buffers (hit / read / dirtied / written) per batch, how many of the batch's
coupon updates were HOT (no index entry added), then the last batch's plans.
The empty side is a fresh database of its own, migrated, with `make bench`'s 1,000 coupons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from benchmarks.database import migrate, preseed
from benchmarks.grown_tables import pool
from contracts import names
from tests.support.database import create_database, drop_database
from worker.app.outcomes import Outcome
from worker.db.engine import CUSTOM_PLANS
from worker.db.repositories import (
    LOCK_AND_LOOK_UP,
    WRITE_ALL,
    coupon_rows,
    outcome_rows,
    taken_rows,
)
from worker.domain.model import Coupon

HOT_UPDATES = (
    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'coupon'"
)


def batch(kind: str, size: int, codes: list[str], rng: random.Random) -> tuple[Any, Any]:
    """The two statements' parameters for one batch of `size` commands of `kind`."""
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(size)]
    now = datetime.now(UTC)
    if kind == "redeem":
        taken = dict.fromkeys(rng.sample(codes, size), 1)
        created: list[Coupon] = []
        body = b'{"id":"00000000-0000-4000-8000-000000000000","code":"X","remaining_count":1}'
        command, outcome = names.REDEEM, names.REDEEMED
    else:
        taken = {}
        created = [Coupon(uuid.uuid4(), f"explain-{rng.getrandbits(64):016x}", 10, 10) for _ in ids]
        body = b'{"id":"00000000-0000-4000-8000-000000000000","code":"X","init_count":10}'
        command, outcome = names.CREATE, names.CREATED
    outcomes = [Outcome(i, command, outcome, body, now) for i in ids]
    load = {"message_ids": ids, "codes": list(taken) or [c.code for c in created]}
    write = coupon_rows(created) | taken_rows(taken) | outcome_rows(outcomes)
    return load, write


async def explain(connection: AsyncConnection, statement: Any, parameters: Any) -> Any:
    compiled = statement.compile(dialect=connection.dialect)
    values = compiled.construct_params(parameters)
    processors = compiled._bind_processors
    ordered = [
        processors[name](values[name]) if name in processors else values[name]
        for name in compiled.positiontup
    ]
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    rows = await driver.fetch(
        f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled.string}", *ordered
    )
    plan = rows[0][0]  # asyncpg decodes json itself only when a codec is set
    return (json.loads(plan) if isinstance(plan, str) else plan)[0]


def buffers(plan: dict[str, Any]) -> str:
    top = plan["Plan"]
    return (
        f"{plan['Execution Time']:7.1f} ms  hit {top['Shared Hit Blocks']:6,} read "
        f"{top['Shared Read Blocks']:5,} dirtied {top['Shared Dirtied Blocks']:5,} written "
        f"{top['Shared Written Blocks']:5,}"
    )


def tree(node: dict[str, Any], depth: int = 0) -> list[str]:
    line = (
        f"{'  ' * depth}{node['Node Type']}"
        + (f" on {node['Relation Name']}" if "Relation Name" in node else "")
        + (f" using {node['Index Name']}" if "Index Name" in node else "")
        + f"  rows={node['Actual Rows']} loops={node['Actual Loops']}"
        + f" time={node['Actual Total Time']:.1f} ms hit={node['Shared Hit Blocks']}"
        + f" read={node['Shared Read Blocks']} dirtied={node['Shared Dirtied Blocks']}"
    )
    return [line, *(s for child in node.get("Plans", []) for s in tree(child, depth + 1))]


async def side(name: str, engine: AsyncEngine, codes: list[str], args: argparse.Namespace) -> None:
    rng = random.Random(20261205)
    for kind in ("redeem", "create"):
        print(f"\n== {name} tables, {args.batches} batches of {args.size} {kind}s")  # noqa: T201
        times: dict[str, list[float]] = {"LOCK_AND_LOOK_UP": [], "WRITE_ALL": []}
        plans: dict[str, Any] = {}
        for _ in range(args.batches):
            load, write = batch(kind, args.size, codes, rng)
            async with engine.connect() as connection:  # one transaction, rolled back
                await connection.execute(text(f"SET LOCAL plan_cache_mode = {CUSTOM_PLANS}"))
                for label, statement, parameters in (
                    ("LOCK_AND_LOOK_UP", LOCK_AND_LOOK_UP, load),
                    ("WRITE_ALL", WRITE_ALL, write),
                ):
                    plans[label] = await explain(connection, statement, parameters)
                    times[label].append(plans[label]["Execution Time"])
                    print(f"  {label:16} {buffers(plans[label])}")  # noqa: T201
                hot = (await connection.execute(text(HOT_UPDATES))).one()
                print(f"  coupon updates HOT: {hot.n_tup_hot_upd} of {hot.n_tup_upd}")  # noqa: T201
                await connection.rollback()
        for label, values in times.items():
            median = statistics.median(values)
            print(f"  {label}: median {median:.1f} ms; the last batch's plan:")  # noqa: T201
            print("\n".join("    " + line for line in tree(plans[label]["Plan"])))  # noqa: T201


async def main(args: argparse.Namespace) -> None:
    grown = create_async_engine(args.database_url)
    admin = args.admin_url
    empty_url = await create_database(admin, "coupon_explain")
    empty = create_async_engine(empty_url)
    try:
        await migrate(empty_url, args.amqp_url)
        bench_codes = [f"bench-{i:05d}" for i in range(1000)]
        await preseed(empty, dict.fromkeys(bench_codes, 1_000_000_000))
        await side("empty", empty, bench_codes, args)
        await side("grown", grown, await pool(grown), args)
    finally:
        await grown.dispose()
        await empty.dispose()
        await drop_database(admin, empty_url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url", help="the grown database (growth --keep)")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--size", type=int, default=250)
    parser.add_argument(
        "--admin-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    asyncio.run(main(parser.parse_args()))
