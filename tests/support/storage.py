"""The two storages behind one face: the in-memory fakes (tests/fakes.py) and PostgreSQL.

The storage contract (tests/integration/test_storage_contract.py) and the pipeline suite
(tests/integration/test_pipeline.py) run every test over both, through the `storage` fixture
of tests/integration/conftest.py. What a test may ask of a storage beyond the unit of work is
here: what others see committed, how many transactions committed, a fresh start, and a wait
until another unit of work is parked on a row lock. The PostgreSQL side reads the tables with
plain SQL, not through `worker.db`: the tests observe the schema, not the adapter's own view.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fakes import FakeDatabase, FakeUnitOfWork
from tests.support.database import truncate
from worker.app.ports import UnitOfWork
from worker.db.unit_of_work import SqlAlchemyUnitOfWork, optimistic_units_of_work
from worker.domain.model import Coupon


@dataclass(frozen=True)
class Storage:
    """A unit of work factory, and what a test may observe of the storage behind it. `commits`
    counts transaction blocks committed: not the optimistic unit of work's, which has none."""

    name: str  # "fake" or "postgresql"
    unit_of_work: Callable[[], UnitOfWork]
    committed_coupons: Callable[[], Awaitable[dict[str, Coupon]]]  # as others see them
    committed_commands: Callable[[], Awaitable[set[str]]]  # message_ids with a stored outcome
    commits: Callable[[], int]  # transactions committed so far
    empty: Callable[[], Awaitable[None]]  # forget everything committed: a fresh database
    wait_until_blocked: Callable[[], Awaitable[None]]  # another unit of work waits on a lock
    # For a batch of one, tried first (`Pipeline`'s `lone_unit_of_work`): PostgreSQL's
    # optimistic unit of work; none on the fakes.
    lone_unit_of_work: Callable[[], UnitOfWork] | None = None


def fake_storage() -> Storage:
    """A fresh in-memory database behind the fakes."""
    database = FakeDatabase()

    async def coupons() -> dict[str, Coupon]:
        return dict(database.coupons)

    async def commands() -> set[str]:
        return set(database.processed)

    async def empty() -> None:
        database.coupons.clear()
        database.processed.clear()

    async def blocked() -> None:
        await asyncio.sleep(0.05)  # the waiter is parked on the holder's event by now

    return Storage(
        "fake",
        lambda: FakeUnitOfWork(database),
        coupons,
        commands,
        lambda: database.commits,
        empty,
        blocked,
    )


COUPONS = text("SELECT id, code, init_count, remaining_count FROM coupon")
COMMANDS = text("SELECT message_id FROM processed_command")
BLOCKED_ON_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


@contextmanager
def postgresql_storage(db: AsyncEngine) -> Iterator[Storage]:
    """The worker's unit of work on the test session's database (emptied by the `db` fixture);
    commits are counted while the block runs."""
    committed = 0

    def count(*_: Any) -> None:
        nonlocal committed
        committed += 1

    async def coupons() -> dict[str, Coupon]:
        async with db.connect() as connection:
            rows = (await connection.execute(COUPONS)).all()
        return {row.code: Coupon(*row) for row in rows}

    async def commands() -> set[str]:
        async with db.connect() as connection:
            return set((await connection.scalars(COMMANDS)).all())

    async def empty() -> None:
        await truncate(db)

    async def blocked() -> None:
        async with asyncio.timeout(30), db.connect() as connection:
            while not await connection.scalar(BLOCKED_ON_A_LOCK):
                await asyncio.sleep(0.02)
                await connection.rollback()  # pg_stat_activity is a snapshot per transaction

    event.listen(db.sync_engine, "commit", count)
    try:
        yield Storage(
            "postgresql",
            lambda: SqlAlchemyUnitOfWork(db),
            coupons,
            commands,
            lambda: committed,
            empty,
            blocked,
            optimistic_units_of_work(db),
        )
    finally:
        event.remove(db.sync_engine, "commit", count)
