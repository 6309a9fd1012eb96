"""Lock waits and deadlocks in one run's database, read from PostgreSQL while the processes run
(`lock_watch` is a `measure.Watch`): never from the worker's word.

- Every `INTERVAL` while every process consumes (the run's `Window`: start-up and stop left
  out), a sample of the worker's backends waiting for a lock (`pg_stat_activity`
  `wait_event_type = 'Lock'`, with `pg_locks.waitstart` of the lock not granted): how many
  samples found a waiter, how many waits were seen (a backend and its wait's start), the longest
  seen, by wait event (`transactionid`: a row another transaction holds, `tuple`: queued behind
  another waiter for that row, ...). A wait shorter than the interval may fall between samples:
  a sampled figure, the same way for every run.
- `pg_stat_database.deadlocks` of the run's database before the processes start and after
  they stopped. A backend reports its counters when idle or when it exits, so the second read
  waits (up to `SETTLE`) until the worker's backends are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Final

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from benchmarks.processes import Window
from benchmarks.stage import Stage

INTERVAL: Final = 0.05  # seconds between samples
SETTLE: Final = 10.0  # seconds the worker's backends may take to go once its processes exited
APPLICATION: Final = "coupon-worker"  # the worker's application_name (worker/db/engine.py)

WAITERS: Final = text(
    "SELECT a.pid, a.wait_event, "
    "extract(epoch FROM now() - l.waitstart) * 1000 AS waited_ms, l.waitstart "
    "FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
    "WHERE a.datname = :database AND a.wait_event_type = 'Lock'"
)
DEADLOCKS: Final = text("SELECT deadlocks FROM pg_stat_database WHERE datname = :database")
BACKENDS: Final = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = :database AND application_name = :app"
)


class LockSamples:
    def __init__(self) -> None:
        self.samples = 0
        self.waiting = 0  # samples that found at least one waiter
        self.most = 0  # waiters in one sample
        self.seen: set[tuple[int, str]] = set()  # (pid, waitstart): one wait
        self.longest_ms = 0.0
        self.events: Counter[str] = Counter()  # wait_event, once per wait seen

    def add(self, rows: list[Any]) -> None:
        self.samples += 1
        self.waiting += bool(rows)
        self.most = max(self.most, len(rows))
        for row in rows:
            wait = (int(row.pid), str(row.waitstart))
            if wait not in self.seen:
                self.seen.add(wait)
                self.events[str(row.wait_event)] += 1
            self.longest_ms = max(self.longest_ms, float(row.waited_ms or 0.0))

    def describe(self) -> dict[str, Any]:
        return {
            "lock_samples": self.samples,
            "lock_waiting_samples": self.waiting,
            "lock_waits_seen": len(self.seen),
            "lock_most_at_once": self.most,
            "lock_longest_ms": round(self.longest_ms, 1),
            "lock_wait_events": dict(self.events.most_common()),
        }


@contextlib.asynccontextmanager
async def lock_watch(stage: Stage, window: Window) -> AsyncIterator[dict[str, Any]]:
    """Samples lock waits in `stage`'s database within `window`; fills the dict it yields
    with `LockSamples.describe()` and `deadlocks` (the counter's rise) on exit."""
    database = make_url(stage.database_url).database
    engine = create_async_engine(stage.admin_url, pool_size=2)
    figures: dict[str, Any] = {}
    samples = LockSamples()
    try:
        async with engine.connect() as connection:
            before = await _deadlocks(connection, database)
        sampler = asyncio.create_task(_sample(engine, database, samples, window))
        try:
            yield figures
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        async with engine.connect() as connection:
            await _settle(connection, database)
            figures.update(
                samples.describe(), deadlocks=await _deadlocks(connection, database) - before
            )
    finally:
        await engine.dispose()


async def _sample(
    engine: AsyncEngine, database: str | None, samples: LockSamples, window: Window
) -> None:
    async with engine.connect() as connection:
        while not window.done_at:
            if window.ready_at:
                result = await connection.execute(WAITERS, {"database": database})
                rows = list(result)
                await connection.commit()  # a fresh snapshot of the statistics views each time
                if not window.done_at:
                    samples.add(rows)
            await asyncio.sleep(INTERVAL)


async def _deadlocks(connection: AsyncConnection, database: str | None) -> int:
    value = await connection.scalar(DEADLOCKS, {"database": database})
    await connection.commit()
    return int(value or 0)


async def _settle(connection: AsyncConnection, database: str | None) -> None:
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        left = await connection.scalar(BACKENDS, {"database": database, "app": APPLICATION})
        await connection.commit()
        if not left:
            return
        await asyncio.sleep(0.1)


async def max_connections(admin_url: str) -> int:
    """The server's `max_connections` (what every replica's pool draws on)."""
    engine = create_async_engine(admin_url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(text("SHOW max_connections")) or 0)
    finally:
        await engine.dispose()
