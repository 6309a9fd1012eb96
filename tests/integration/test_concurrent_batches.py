"""Concurrent batches on PostgreSQL: a hot coupon never oversells, and batches that share
coupons queue in one global lock order instead of deadlocking."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    create_async_engine,
)

from contracts.commands import CreateCoupon, RedeemCoupon
from worker.app.outcomes import Outcome
from worker.app.pipeline import Envelope, Pipeline
from worker.db import tables
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.domain.model import Coupon


async def remaining(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(tables.coupon.c.code, tables.coupon.c.remaining_count)
        )
        return {row.code: row.remaining_count for row in rows}


@pytest.mark.timeout(120)
async def test_concurrent_batches_of_a_hot_coupon_grant_exactly_what_is_left_in_order(
    db: AsyncEngine,
) -> None:
    """50 redeems of a coupon with 10 left, in 5 concurrent batches of 10 (with an unknown
    code among them): exactly 10 granted, each batch's grants before its refusals."""
    pipeline = Pipeline(lambda: SqlAlchemyUnitOfWork(db))
    await pipeline.process([Envelope("create", CreateCoupon(code="HOT", init_count=25))])
    await pipeline.process([Envelope(f"early-{i}", RedeemCoupon(code="HOT")) for i in range(15)])
    batches = [
        [
            *(Envelope(f"b{b}-{i}", RedeemCoupon(code="HOT")) for i in range(10)),
            Envelope(f"b{b}-unknown", RedeemCoupon(code="NOT-THERE")),
        ]
        for b in range(5)
    ]

    async with asyncio.timeout(90):  # a conflict or a deadlock would raise here, not retry
        results = await asyncio.gather(*(pipeline.process(batch) for batch in batches))

    granted = [o for outcomes in results for o in outcomes if o.routing_key == "coupon.redeemed"]
    assert len(granted) == 10
    assert sorted(json.loads(o.body)["remaining_count"] for o in granted) == list(range(10))
    for outcomes in results:
        *hot, unknown = outcomes
        kinds = [o.routing_key for o in hot]
        granted_here = kinds.count("coupon.redeemed")
        assert kinds == ["coupon.redeemed"] * granted_here + ["coupon.error"] * (10 - granted_here)
        assert all(b'"Exhausted"' in o.body for o in hot[granted_here:])
        assert b'"DoesNotExist"' in unknown.body
    assert await remaining(db) == {"HOT": 0}


class TogetherUnitOfWork(SqlAlchemyUnitOfWork):
    """Locks only once every batch of the round is about to: their lock statements overlap."""

    def __init__(self, engine: AsyncEngine, barrier: asyncio.Barrier) -> None:
        super().__init__(engine)
        self.barrier = barrier

    async def load_batch(
        self, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        await asyncio.wait_for(self.barrier.wait(), 30)
        return await super().load_batch(message_ids, codes)


DEADLOCKS = text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")


async def deadlocks(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:  # a new snapshot of the statistics
        return int(await connection.scalar(DEADLOCKS) or 0)


@pytest.mark.timeout(180)
async def test_concurrent_batches_in_opposite_orders_never_deadlock(
    database_url: str, db: AsyncEngine
) -> None:
    """Two batches redeem the same 1,000 coupons, one in ascending and one in descending
    code order, their lock statements sent together, ten times over. Rows locked in batch
    order meet in the middle and deadlock (PostgreSQL aborts one: a 40P01 conflict that the
    consumer would retry; with that mutation about 4 rounds in 10 deadlock); locked in code
    order, the second batch queues behind the first."""
    codes = [f"ORDER-{i:04}" for i in range(1000)]
    rounds = 10
    # A pool of its own: when it closes, its backends report their statistics as they exit.
    engine = create_async_engine(database_url, pool_size=2, max_overflow=0)
    try:
        pipeline = Pipeline(lambda: SqlAlchemyUnitOfWork(engine))
        await pipeline.process(
            [Envelope(f"c-{c}", CreateCoupon(code=c, init_count=50)) for c in codes]
        )
        before = await deadlocks(db)
        for round_ in range(rounds):
            ascending = [Envelope(f"a{round_}-{c}", RedeemCoupon(code=c)) for c in codes]
            descending = [Envelope(f"d{round_}-{c}", RedeemCoupon(code=c)) for c in codes[::-1]]
            barrier = asyncio.Barrier(2)
            pipeline = Pipeline(lambda: TogetherUnitOfWork(engine, barrier))  # noqa: B023
            async with asyncio.timeout(60):  # a deadlock raises TransactionConflict here
                await asyncio.gather(pipeline.process(ascending), pipeline.process(descending))
    finally:
        await engine.dispose()
    assert await remaining(db) == dict.fromkeys(codes, 50 - 2 * rounds)
    # A deadlock is counted by the backend that was aborted; give its report time to land.
    async with asyncio.timeout(10):
        for _ in range(20):
            assert await deadlocks(db) == before
            await asyncio.sleep(0.1)
