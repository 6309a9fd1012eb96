"""Where a batch of one spends its time: the pipeline alone (no broker), one command per batch
at a steady pace, as the worker runs at a low rate (every command a batch of one).

    uv run python scripts/batch_of_one.py [--commands 2000] [--rate 200] [--busy 2]
        [--rounds 3]

Creates a throw-away database next to DATABASE_URL's (migrated by alembic), builds the engine
as the worker does (`worker.db.engine.create_engine`), then runs creates and redeems of distinct
coupons through `Pipeline.process`, one per batch, `--rate` per second. Prints, per workload:
the batch's wall time (p50 / p90 / p99 / max), the time inside the driver per statement (from
SQLAlchemy's cursor events, the statement's first words; the first statement of a transaction
includes asyncpg's BEGIN), the commit (from SQLAlchemy's commit event to the batch's end: COMMIT,
then the connection's close handing it back to the pool), and what is left (Python:
SQLAlchemy, the handlers, building outcomes). For comparison, the same round trips sent by
asyncpg alone: a prepared `SELECT 1`, and BEGIN / COMMIT. Round trips per batch are counted
as they happen: SQLAlchemy's cursor executions (each a prepared statement, one round trip once
prepared on the connection) and asyncpg's query logger on every pooled connection (BEGIN, COMMIT,
any ping: the simple-protocol queries). `--busy N` runs N busy-looping processes alongside
(both cores contended, as when the broker and the worker share the machine with the driver).
Two pipelines side by side, `--rounds` times each, alternating: the worker's (a batch of one
through the optimistic unit of work: two round trips, read without a lock, written with a
guard) and one with the locking unit of work only (four: BEGIN, lock-and-look-up, the write,
COMMIT), as every batch of several goes; then the medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import Command, CreateCoupon, RedeemCoupon
from tests.support.database import create_database, drop_database
from worker.app.pipeline import Envelope, Pipeline
from worker.db import migrations
from worker.db.engine import create_engine
from worker.db.tables import coupon
from worker.db.unit_of_work import SqlAlchemyUnitOfWork, optimistic_units_of_work
from worker.settings import Settings


def nearest(values: list[float], q: float) -> float:
    """The nearest-rank `q` quantile of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def percentiles(values: list[float]) -> str:
    p50, p90, p99 = (nearest(values, q) for q in (0.5, 0.9, 0.99))
    return f"p50 {p50:6.2f}  p90 {p90:6.2f}  p99 {p99:6.2f}  max {max(values):6.2f} ms"


class Timings:
    """Driver time per statement and per commit, from SQLAlchemy's engine events."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.by_statement: dict[str, list[float]] = defaultdict(list)
        self._started: dict[int, float] = {}
        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._before)
        event.listen(sync, "after_cursor_execute", self._after)
        event.listen(sync, "commit", self._commit_starts)
        self._commit_started: float | None = None
        self.queries = 0  # asyncpg's query logger: the simple protocol (BEGIN, COMMIT, ping)
        self.statements = 0  # SQLAlchemy's cursor executions: prepared statements
        event.listen(sync, "connect", self._log_queries)

    def _log_queries(self, dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(self._count_query)

    def _count_query(self, _: Any) -> None:
        self.queries += 1

    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        started = self._started.pop(id(cursor))
        self.statements += 1
        words = " ".join(statement.split()[:3])
        self.by_statement[words].append((time.perf_counter() - started) * 1000)

    def _commit_starts(self, conn: Any) -> None:
        self._commit_started = time.perf_counter()

    def commit_ended(self) -> None:
        if self._commit_started is not None:
            self.by_statement["COMMIT (from the commit event)"].append(
                (time.perf_counter() - self._commit_started) * 1000
            )
            self._commit_started = None


async def paced(
    count: int, rate: float, make: Callable[[int], Command], pipeline: Pipeline, timings: Timings
) -> list[float]:
    walls: list[float] = []
    interval = 1 / rate
    next_at = time.perf_counter()
    for n in range(count):
        next_at += interval
        started = time.perf_counter()
        await pipeline.process([Envelope(str(uuid.uuid4()), make(n))])
        timings.commit_ended()
        walls.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return walls


async def raw_round_trips(dsn: str, count: int) -> dict[str, list[float]]:
    connection = await asyncpg.connect(dsn)
    out: dict[str, list[float]] = defaultdict(list)
    try:
        select_one = await connection.prepare("SELECT 1")
        for _ in range(count):
            started = time.perf_counter()
            await select_one.fetchval()
            out["asyncpg: prepared SELECT 1"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            transaction = connection.transaction()
            await transaction.start()
            out["asyncpg: BEGIN"].append((time.perf_counter() - started) * 1000)
            await connection.execute("SELECT 1")
            started = time.perf_counter()
            await transaction.commit()
            out["asyncpg: COMMIT (read-only)"].append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.005)
    finally:
        await connection.close()
    return out


@contextmanager
def section(title: str) -> Iterator[None]:
    sys.stdout.write(f"\n== {title}\n")
    yield
    sys.stdout.flush()


async def main(commands: int, rate: float, rounds: int) -> None:
    admin_url = os.environ.get(
        "DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    url = await create_database(admin_url, prefix="coupon_one")
    settings = Settings.model_validate({"DATABASE_URL": url})
    engine = create_engine(settings)
    try:
        timings = Timings(engine)
        await migrations.upgrade(engine)
        variants = {
            "optimistic": Pipeline(
                lambda: SqlAlchemyUnitOfWork(engine),
                lone_unit_of_work=optimistic_units_of_work(engine),
            ),
            "locking": Pipeline(lambda: SqlAlchemyUnitOfWork(engine)),
        }
        # Warm up: compile the statements, prepare them on the pool's connections.
        for name, pipeline in variants.items():
            warm = f"W{name}-"
            await paced(
                200,
                1000,
                lambda n: CreateCoupon(code=f"{warm}{n}", init_count=1),  # noqa: B023
                pipeline,
                timings,
            )
        # Per variant and workload, each round's p50 and p99 of the batch's wall time.
        summary: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
        for round_ in range(rounds):
            for name, pipeline in variants.items():
                prefix = f"{name}{round_}-"
                workloads: dict[str, Callable[[int], Command]] = {
                    "create": lambda n: CreateCoupon(code=f"{prefix}{n}", init_count=2),  # noqa: B023
                    "redeem": lambda n: RedeemCoupon(code=f"{prefix}{n}"),  # noqa: B023
                }
                for workload, make in workloads.items():
                    timings.by_statement.clear()
                    timings.queries = timings.statements = 0
                    walls = await paced(commands, rate, make, pipeline, timings)
                    trips = (timings.queries + timings.statements) / commands
                    summary[name, workload].append(
                        (nearest(walls, 0.5), nearest(walls, 0.99), trips)
                    )
                    title = f"{name} pipeline, {workload}, round {round_ + 1}"
                    with section(f"{title}: {commands} batches of one at {rate:g}/s"):
                        report(walls, timings, trips)
            await check_counts(engine, variants, round_, commands)
        with section(f"medians of {rounds} round(s), batch wall time"):
            for (name, workload), figures in summary.items():
                p50 = statistics.median(f[0] for f in figures)
                p99 = statistics.median(f[1] for f in figures)
                trips = statistics.median(f[2] for f in figures)
                sys.stdout.write(
                    f"{name + ' ' + workload:>44} p50 {p50:6.2f}  p99 {p99:6.2f} ms"
                    f"  round trips {trips:4.2f}\n"
                )
        raw_dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        with section("asyncpg alone, the same server"):
            for what, values in (await raw_round_trips(raw_dsn, commands)).items():
                sys.stdout.write(f"{what:>44} {percentiles(values)}\n")
    finally:
        await engine.dispose()
        await drop_database(admin_url, url)


def report(walls: list[float], timings: Timings, trips: float) -> None:
    sys.stdout.write(f"{'batch (wall)':>44} {percentiles(walls)}\n")
    medians = 0.0
    for statement, values in sorted(timings.by_statement.items()):
        medians += statistics.median(values)
        sys.stdout.write(f"{statement[:44]:>44} {percentiles(values)}\n")
    left = statistics.median(walls) - medians
    sys.stdout.write(f"{'batch p50 less the statements p50s':>44} {left:6.2f} ms\n")
    sys.stdout.write(f"{'round trips per batch (asyncpg queries)':>44} {trips:6.2f}\n")


async def check_counts(
    engine: AsyncEngine, variants: dict[str, Pipeline], round_: int, commands: int
) -> None:
    """Every coupon of the round created with 2 and redeemed once; one outcome per command."""
    async with engine.connect() as connection:
        for name in variants:
            prefix = f"{name}{round_}-"
            rows = (
                await connection.execute(
                    select(func.count(), func.sum(coupon.c.remaining_count)).where(
                        coupon.c.code.startswith(prefix)
                    )
                )
            ).one()
            if tuple(rows) != (commands, commands):
                raise SystemExit(f"{name}, round {round_ + 1}: coupons (count, left) {tuple(rows)}")
    sys.stdout.write(f"\nround {round_ + 1}: every coupon created once and redeemed once\n")


def busy() -> None:
    while True:
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes alongside")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds")
    args = parser.parse_args()
    hogs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.busy)]
    for hog in hogs:
        hog.start()
    try:
        asyncio.run(main(args.commands, args.rate, args.rounds))
    finally:
        for hog in hogs:
            hog.terminate()
