"""The optimistic unit of work on PostgreSQL (`worker.db.unit_of_work.OptimisticUnitOfWork`):
a batch of one in two round trips, and never a write decided on a state that no longer holds.

It reads without a lock and writes everything in one guarded statement outside a transaction
block, so what the locking unit of work gets from its locks, this one must get from the guard:
each test below changes what a batch read between its read and its write (a redemption, a
create, the same command recorded, a lock held across the write) and checks that the batch
wrote nothing and conflicted, and that the pipeline then applies the command with locks, with
the outcome of applying the commands one at a time. The oracle and idempotency suites of
test_pipeline.py run their batches of one through it too (the `storage` fixture)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import CreateCoupon, GetCoupon, RedeemCoupon
from tests.integration.test_concurrent_batches import remaining
from tests.integration.test_pipeline import executions
from tests.integration.test_storage_contract import coupon, outcome
from tests.support.storage import postgresql_storage
from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.pipeline import Envelope, Pipeline
from worker.db import tables
from worker.db.engine import create_engine
from worker.db.unit_of_work import (
    OptimisticUnitOfWork,
    SqlAlchemyUnitOfWork,
    optimistic_units_of_work,
)
from worker.domain.model import Coupon
from worker.settings import Settings

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def autocommit(db: AsyncEngine) -> AsyncEngine:
    return db.execution_options(isolation_level="AUTOCOMMIT")


def pipelines(db: AsyncEngine) -> tuple[Pipeline, Pipeline]:
    """The worker's pipeline (a batch of one tried optimistically first) and a locking one."""
    optimistic = Pipeline(
        lambda: SqlAlchemyUnitOfWork(db),
        clock=lambda: NOW,
        lone_unit_of_work=optimistic_units_of_work(db),
    )
    return optimistic, Pipeline(lambda: SqlAlchemyUnitOfWork(db), clock=lambda: NOW)


async def recorded(db: AsyncEngine) -> set[str]:
    async with db.connect() as connection:
        return set((await connection.scalars(select(tables.processed_command.c.message_id))).all())


async def simple_queries(db: AsyncEngine, seen: list[str]) -> None:
    """asyncpg's own query logger on every connection of `db`'s pool (checked out at once):
    what it sends with the simple protocol (BEGIN, COMMIT, a ping) and SQLAlchemy's events may
    not show."""

    def query(record: Any) -> None:
        seen.append(str(record.query).split()[0].rstrip(";").upper())

    connections = [await db.connect() for _ in range(db.sync_engine.pool.size())]  # type: ignore[attr-defined]
    try:
        for connection in connections:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            driver.add_query_logger(query)
    finally:
        for connection in connections:
            await connection.close()


def prepared(seen: list[str]) -> list[str]:
    """The statements among `executions`' (each by its first words), without its BEGIN and
    COMMIT: SQLAlchemy's events fire outside a transaction block too; asyncpg's query logger
    (`simple_queries`) tells what was sent."""
    return [" ".join(s.split()[:3]) for s in seen if s not in ("BEGIN", "COMMIT")]


async def until_blocked(db: AsyncEngine) -> None:
    """Until a statement on `db`'s database waits on a lock."""
    with postgresql_storage(db) as storage:
        await storage.wait_until_blocked()


async def logged() -> None:
    """asyncpg calls its query loggers soon after a query, not during it."""
    await asyncio.sleep(0.05)


LOOK_UP = "SELECT processed_command.message_id, processed_command.command,"
GUARDED_WRITE = "WITH standing AS"


async def test_a_batch_of_one_costs_two_round_trips_and_a_read_one(
    database_url: str, db: AsyncEngine
) -> None:
    """Counted on the worker's own engine (its pings only after a second idle), once every
    statement is prepared on every connection: the prepared statements executed (SQLAlchemy's
    cursor events), and what asyncpg sends besides (its query logger: BEGIN, COMMIT, a ping,
    a statement prepared anew), one round trip each."""
    engine = create_engine(Settings.model_validate({"DATABASE_URL": database_url}))
    try:
        worker, _ = pipelines(engine)
        queries: list[str] = []
        await simple_queries(engine, queries)  # opens every connection of the pool
        # Warm up: every statement prepared on every connection (the pool hands them out in
        # turn), with the types of its parameters.
        for i in range(3 * engine.sync_engine.pool.size()):  # type: ignore[attr-defined]
            await worker.process([Envelope(f"w{i}", CreateCoupon(code=f"W{i}", init_count=2))])
            await worker.process([Envelope(f"x{i}", RedeemCoupon(code=f"W{i}"))])
            await worker.process([Envelope(f"y{i}", GetCoupon(code=f"W{i}"))])
            await worker.process([Envelope(f"z{i}", RedeemCoupon(code=f"W{i}"))] * 2)
        await logged()
        queries.clear()
        with executions(engine) as seen:
            await worker.process([Envelope("c", CreateCoupon(code="A", init_count=2))])
            await logged()
            assert prepared(seen) == [LOOK_UP, GUARDED_WRITE]
            assert queries == [], "no BEGIN, no COMMIT"
            seen.clear()
            await worker.process([Envelope("r", RedeemCoupon(code="A"))])
            await logged()
            assert prepared(seen) == [LOOK_UP, GUARDED_WRITE]
            assert queries == []
            seen.clear()
            [found] = await worker.process([Envelope("g", GetCoupon(code="A"))])
            await logged()
            assert prepared(seen) == ["SELECT coupon.id, coupon.code,"], seen
            assert queries == []
            assert json.loads(found.body)["remaining_count"] == 1

            # The locking unit of work, for contrast (a batch of two): four round trips.
            seen.clear()
            queries.clear()
            await worker.process(
                [Envelope("r2", RedeemCoupon(code="A")), Envelope("r3", RedeemCoupon(code="A"))]
            )
            await logged()
            assert prepared(seen) == ["WITH locked AS", "WITH created AS"], seen
            assert queries == ["BEGIN", "COMMIT"], queries
    finally:
        await engine.dispose()
    assert (await remaining(db))["A"] == 0
    assert {"c", "r", "r2", "r3"} <= await recorded(db)


class Interrupted(OptimisticUnitOfWork):
    """Runs `between` after the batch's read and before its guarded write."""

    def __init__(self, engine: AsyncEngine, between: Callable[[], Awaitable[None]]) -> None:
        super().__init__(engine)
        self._between = between

    async def load_batch(
        self, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        found = await super().load_batch(message_ids, codes)
        await self._between()
        return found


async def test_a_coupon_taken_from_between_read_and_write_is_a_conflict(db: AsyncEngine) -> None:
    _, locking = pipelines(db)
    await locking.process([Envelope("c", CreateCoupon(code="A", init_count=2))])

    async def redeemed_meanwhile() -> None:
        await locking.process([Envelope("other", RedeemCoupon(code="A"))])

    async with Interrupted(autocommit(db), redeemed_meanwhile) as uow:
        _, read = await uow.load_batch(["mine"], ["A"])
        assert read["A"].remaining_count == 2  # before the other redeem
        await uow.write_batch([], {"A": 1}, [outcome("mine")])
        with pytest.raises(TransactionConflict, match="changed"):
            await uow.commit()
    assert await remaining(db) == {"A": 1}, "only the other redeem"
    assert await recorded(db) == {"c", "other"}


@pytest.mark.timeout(60)
async def test_a_code_created_between_read_and_write_is_a_conflict(db: AsyncEngine) -> None:
    """Both ways: committed before the write began, the guard's count sees it (the batch read
    the code missing); committed while the write waits on it, the batch's own insert of the
    code is a unique violation. Either way, nothing of the batch is written."""
    _, locking = pipelines(db)

    async def created_meanwhile() -> None:
        await locking.process([Envelope("other", CreateCoupon(code="N", init_count=3))])

    async with Interrupted(autocommit(db), created_meanwhile) as uow:
        assert await uow.load_batch(["mine"], ["N"]) == ({}, {})
        await uow.write_batch([], {}, [outcome("mine")])  # "N does not exist", recorded
        with pytest.raises(TransactionConflict, match="created"):
            await uow.commit()
    assert await recorded(db) == {"other"}

    async with OptimisticUnitOfWork(autocommit(db)) as mine:
        assert await mine.load_batch(["mine-m"], ["M"]) == ({}, {})
        await mine.write_batch([coupon("M", 9)], {}, [outcome("mine-m")])
        async with SqlAlchemyUnitOfWork(db) as other:
            await other.load_batch(["other-m"], ["M"])
            await other.write_batch([coupon("M", 3)], {}, [outcome("other-m")])  # uncommitted
            write = asyncio.create_task(mine.commit())
            await until_blocked(db)  # the insert of M waits for the other transaction
            assert not write.done()
            await other.commit()
        with pytest.raises(TransactionConflict, match="created one of these codes"):
            await write
    assert await remaining(db) == {"N": 3, "M": 3}
    assert await recorded(db) == {"other", "other-m"}


async def test_the_same_command_recorded_between_read_and_write_is_a_conflict(
    db: AsyncEngine,
) -> None:
    _, locking = pipelines(db)
    await locking.process([Envelope("c", CreateCoupon(code="A", init_count=5))])

    async def recorded_meanwhile() -> None:  # another delivery of "r", on another coupon
        await locking.process([Envelope("c2", CreateCoupon(code="B", init_count=5))])
        await locking.process([Envelope("r", RedeemCoupon(code="B"))])

    async with Interrupted(autocommit(db), recorded_meanwhile) as uow:
        assert (await uow.load_batch(["r"], ["A"]))[0] == {}
        await uow.write_batch([], {"A": 1}, [outcome("r")])
        with pytest.raises(TransactionConflict, match="recorded"):
            await uow.commit()
    assert await remaining(db) == {"A": 5, "B": 4}, "A untouched: the statement wrote nothing"


@pytest.mark.timeout(60)
async def test_a_write_that_waits_on_a_lock_sees_the_change_made_under_it(
    db: AsyncEngine,
) -> None:
    """The guarded write queues behind a locking batch that holds the coupon, and compares
    with the row as that batch left it: a conflict, not a write on what it read before."""
    _, locking = pipelines(db)
    await locking.process([Envelope("c", CreateCoupon(code="A", init_count=2))])
    async with OptimisticUnitOfWork(autocommit(db)) as mine:
        await mine.load_batch(["mine"], ["A"])
        await mine.write_batch([], {"A": 1}, [outcome("mine")])
        async with SqlAlchemyUnitOfWork(db) as holder:
            await holder.load_batch(["held"], ["A"])  # A locked
            write = asyncio.create_task(mine.commit())
            await until_blocked(db)
            assert not write.done()
            await holder.write_batch([], {"A": 1}, [outcome("held")])
            await holder.commit()
        with pytest.raises(TransactionConflict, match="changed"):
            await write
    assert await remaining(db) == {"A": 1}
    assert await recorded(db) == {"c", "held"}


async def test_after_a_conflict_the_pipeline_applies_the_command_with_locks(
    db: AsyncEngine,
) -> None:
    _, locking = pipelines(db)
    await locking.process([Envelope("c", CreateCoupon(code="A", init_count=2))])
    conflicts: list[None] = []

    async def redeemed_meanwhile() -> None:
        if not conflicts:  # once
            conflicts.append(None)
            await locking.process([Envelope("other", RedeemCoupon(code="A"))])

    worker = Pipeline(
        lambda: SqlAlchemyUnitOfWork(db),
        clock=lambda: NOW,
        lone_unit_of_work=lambda: Interrupted(autocommit(db), redeemed_meanwhile),
        on_lone_conflict=lambda: conflicts.append(None),
    )
    [mine] = await worker.process([Envelope("mine", RedeemCoupon(code="A"))])
    assert len(conflicts) == 2, "one interruption, one conflict heard"
    assert json.loads(mine.body)["remaining_count"] == 0, "applied after the other, with locks"
    [last] = await worker.process([Envelope("last", RedeemCoupon(code="A"))])
    assert json.loads(last.body)["error"] == "Exhausted"
    assert await remaining(db) == {"A": 0}
    assert await recorded(db) == {"c", "other", "mine", "last"}


@pytest.mark.timeout(120)
async def test_lone_redeems_of_a_hot_coupon_from_many_pipelines_never_oversell(
    db: AsyncEngine,
) -> None:
    """60 redeems of a coupon with 20 left, each a batch of one, 6 at a time from 6 workers'
    pipelines: exactly 20 granted, each remaining count once."""
    worker, _ = pipelines(db)
    await worker.process([Envelope("c", CreateCoupon(code="HOT", init_count=20))])
    workers = [pipelines(db)[0] for _ in range(6)]

    async def redeem(w: int) -> list[Outcome]:
        return [
            (await workers[w].process([Envelope(f"w{w}-{i}", RedeemCoupon(code="HOT"))]))[0]
            for i in range(10)
        ]

    async with asyncio.timeout(90):
        results = await asyncio.gather(*(redeem(w) for w in range(6)))
    granted = [o for outcomes in results for o in outcomes if o.routing_key == "coupon.redeemed"]
    assert sorted(json.loads(o.body)["remaining_count"] for o in granted) == list(range(20))
    assert await remaining(db) == {"HOT": 0}
    assert len(await recorded(db)) == 61


async def test_it_needs_an_autocommit_engine_and_its_repositories_only_read(
    db: AsyncEngine,
) -> None:
    with pytest.raises(ValueError, match="AUTOCOMMIT"):
        OptimisticUnitOfWork(db)
    async with OptimisticUnitOfWork(autocommit(db)) as uow:
        with pytest.raises(RuntimeError, match="write_batch"):
            await uow.coupons.create_many([coupon("X", 1)])
        with pytest.raises(RuntimeError, match="write_batch"):
            await uow.processed.record([outcome("x")])
        with pytest.raises(RuntimeError, match="no locks"):
            await uow.coupons.lock_many(["X"])
    assert await remaining(db) == {}
