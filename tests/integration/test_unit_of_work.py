"""The SQLAlchemy unit of work on PostgreSQL: commit only when told, never oversell."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from worker.app.failures import (
    DependencyUnavailable,
    TransactionConflict,
    TransientFailure,
)
from worker.app.outcomes import Outcome
from worker.db.tables import Coupon, ProcessedCommand
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.domain.errors import DoesNotExist, Exhausted
from worker.domain.model import Coupon as CouponModel

Sessions = async_sessionmaker[AsyncSession]


async def stored_codes(engine: AsyncEngine) -> list[str]:
    """What another connection sees: only committed rows."""
    async with engine.connect() as connection:
        return list((await connection.scalars(select(Coupon.code).order_by(Coupon.code))).all())


async def processed_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.scalars(select(ProcessedCommand.message_id))).all())


async def test_changes_are_visible_after_commit(sessions: Sessions, db: AsyncEngine) -> None:
    async with SqlAlchemyUnitOfWork(sessions) as uow:
        await uow.coupons.create("KEEP", 2)
        await uow.coupons.redeem("KEEP")
        await uow.commit()
    assert await stored_codes(db) == ["KEEP"]
    async with SqlAlchemyUnitOfWork(sessions) as uow:
        assert (await uow.coupons.get_by_code("KEEP")).remaining_count == 1


async def test_exit_without_commit_rolls_back(sessions: Sessions, db: AsyncEngine) -> None:
    async with SqlAlchemyUnitOfWork(sessions) as uow:
        await uow.coupons.create("KEEP", 2)
        await uow.commit()
    async with SqlAlchemyUnitOfWork(sessions) as uow:
        await uow.coupons.create("DROP", 1)
        await uow.coupons.redeem("KEEP")
        await uow.processed.record([_outcome("m-drop")])
        assert (await uow.coupons.get_by_code("DROP")).remaining_count == 1  # own writes seen
    assert await stored_codes(db) == ["KEEP"]
    assert await processed_ids(db) == []
    async with SqlAlchemyUnitOfWork(sessions) as uow:
        assert (await uow.coupons.get_by_code("KEEP")).remaining_count == 2


async def test_an_exception_rolls_back_and_propagates(sessions: Sessions, db: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="boom"):
        async with SqlAlchemyUnitOfWork(sessions) as uow:
            await uow.coupons.create("DROP", 1)
            raise ValueError("boom")
    # A business error is not special either: without commit, nothing stays.
    with pytest.raises(DoesNotExist):
        async with SqlAlchemyUnitOfWork(sessions) as uow:
            await uow.coupons.create("DROP-TOO", 1)
            await uow.coupons.redeem("NOPE")
    assert await stored_codes(db) == []


async def test_repositories_never_commit(sessions: Sessions, db: AsyncEngine) -> None:
    async with SqlAlchemyUnitOfWork(sessions) as uow:
        await uow.coupons.create("PENDING", 3)
        await uow.coupons.redeem("PENDING")
        await uow.coupons.get_by_code("PENDING")
        await uow.processed.record([_outcome("m-pending")])
        assert set(await uow.processed.outcomes(["m-pending"])) == {"m-pending"}  # own write
        # Everything above ran; another connection still sees nothing of it.
        assert await stored_codes(db) == []
        assert await processed_ids(db) == []
        await uow.commit()
    assert await stored_codes(db) == ["PENDING"]
    assert await processed_ids(db) == ["m-pending"]


async def test_commit_outside_the_block_is_refused(sessions: Sessions) -> None:
    uow = SqlAlchemyUnitOfWork(sessions)
    with pytest.raises(RuntimeError):
        await uow.commit()
    async with uow:
        pass
    with pytest.raises(RuntimeError):
        await uow.commit()


def _raising(sqlstate: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '{sqlstate}'; END $$"


# The statements are fixed test data (no input reaches them); DO blocks take no parameters.
@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        (_raising("40001"), TransactionConflict),  # serialization failure
        (_raising("40P01"), TransactionConflict),  # deadlock
        (_raising("57P01"), DependencyUnavailable),  # admin shutdown
        (_raising("08006"), DependencyUnavailable),  # connection failure
        (_raising("53300"), DependencyUnavailable),  # too many connections
    ],
)
async def test_transient_database_errors_become_transient_failures(
    sessions: Sessions, statement: str, kind: type[TransientFailure]
) -> None:
    with pytest.raises(TransientFailure) as raised:
        async with SqlAlchemyUnitOfWork(sessions) as uow:
            await uow.coupons.session.execute(text(statement))
    assert type(raised.value) is kind


async def test_other_database_errors_stay_what_they_are(sessions: Sessions) -> None:
    with pytest.raises(DBAPIError) as raised:
        async with SqlAlchemyUnitOfWork(sessions) as uow:
            await uow.coupons.session.execute(text("SELECT 1 / 0"))
    assert not isinstance(raised.value, TransientFailure)
    assert "division by zero" in str(raised.value)


@pytest.mark.timeout(120)
async def test_concurrent_redeems_never_oversell(sessions: Sessions, db: AsyncEngine) -> None:
    """50 redeems, each in its own unit of work on its own connection, of a coupon with 10
    left: all read the coupon, meet at a barrier, then race to redeem and commit."""
    redeemers, left = 50, 10
    async with SqlAlchemyUnitOfWork(sessions) as uow:
        await uow.coupons.create("HOT", 25)
        for _ in range(25 - left):
            await uow.coupons.redeem("HOT")
        await uow.commit()
    barrier = asyncio.Barrier(redeemers)

    async def redeem() -> CouponModel | Exhausted:
        async with SqlAlchemyUnitOfWork(sessions) as uow:
            seen = await uow.coupons.get_by_code("HOT")  # holds a connection from here on
            assert seen.remaining_count == left
            await barrier.wait()
            try:
                coupon = await uow.coupons.redeem("HOT")
            except Exhausted as exhausted:
                return exhausted
            await uow.commit()
            return coupon

    async with asyncio.timeout(90):
        results = await asyncio.gather(*(redeem() for _ in range(redeemers)))
    succeeded = [r for r in results if isinstance(r, CouponModel)]
    exhausted = [r for r in results if isinstance(r, Exhausted)]
    assert len(succeeded) == left
    assert len(exhausted) == redeemers - left
    assert sorted(c.remaining_count for c in succeeded) == list(range(left))
    async with db.connect() as connection:
        remaining = await connection.scalar(
            select(Coupon.remaining_count).where(Coupon.code == "HOT")
        )
    assert remaining == 0


def _outcome(message_id: str) -> Outcome:
    return Outcome(
        command_message_id=message_id,
        command="coupon.create",
        routing_key="coupon.created",
        body=b"{}",
        occurred_at=datetime.now(UTC),
    )
