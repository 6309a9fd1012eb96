"""The fakes keep the promises of the real adapters, or unit tests built on them prove nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tests.fakes import FakeDatabase, FakeUnitOfWork
from worker.app.outcomes import Outcome
from worker.domain.errors import AlreadyExists, DoesNotExist, Exhausted


async def test_changes_are_visible_only_after_commit() -> None:
    database = FakeDatabase()
    async with FakeUnitOfWork(database) as uow:
        await uow.coupons.create("A", 2)
        assert (await uow.coupons.get_by_code("A")).remaining_count == 2
        assert database.coupons == {}
        await uow.commit()
    assert database.coupons["A"].remaining_count == 2
    async with FakeUnitOfWork(database) as uow:
        assert (await uow.coupons.redeem("A")).remaining_count == 1
    assert database.coupons["A"].remaining_count == 2, "exit without commit must discard"


async def test_exception_discards_the_work() -> None:
    database = FakeDatabase()
    with pytest.raises(RuntimeError):
        async with FakeUnitOfWork(database) as uow:
            await uow.coupons.create("A", 1)
            raise RuntimeError("boom")
    assert database.coupons == {}
    assert database.rollbacks == 1


async def test_repository_errors_match_the_real_ones() -> None:
    database = FakeDatabase()
    async with FakeUnitOfWork(database) as uow:
        await uow.coupons.create("A", 1)
        with pytest.raises(AlreadyExists):
            await uow.coupons.create("A", 5)
        await uow.commit()
    async with FakeUnitOfWork(database) as uow:
        with pytest.raises(AlreadyExists):
            await uow.coupons.create("A", 5)
        with pytest.raises(DoesNotExist):
            await uow.coupons.get_by_code("B")
        with pytest.raises(DoesNotExist):
            await uow.coupons.redeem("B")
        assert (await uow.coupons.redeem("A")).remaining_count == 0
        with pytest.raises(Exhausted):
            await uow.coupons.redeem("A")
        assert (await uow.coupons.get_by_code("A")).remaining_count == 0


async def test_commit_outside_the_context_is_refused() -> None:
    uow = FakeUnitOfWork(FakeDatabase())
    with pytest.raises(RuntimeError):
        await uow.commit()


async def test_concurrent_redeems_wait_for_each_other_and_never_oversell() -> None:
    database = FakeDatabase()
    async with FakeUnitOfWork(database) as uow:
        await uow.coupons.create("HOT", 10)
        await uow.commit()

    async def redeem() -> bool:
        async with FakeUnitOfWork(database) as uow:
            try:
                await uow.coupons.redeem("HOT")
            except Exhausted:
                return False
            await asyncio.sleep(0)  # let the others run while the "row" is locked
            await uow.commit()
            return True

    results = await asyncio.gather(*(redeem() for _ in range(50)))
    assert results.count(True) == 10
    assert database.coupons["HOT"].remaining_count == 0
    assert database.locks == {}


async def test_a_concurrent_create_of_the_same_code_waits_for_the_first() -> None:
    database = FakeDatabase()
    first = await FakeUnitOfWork(database).__aenter__()
    await first.coupons.create("RACE", 1)
    second = await FakeUnitOfWork(database).__aenter__()
    racing = asyncio.create_task(second.coupons.create("RACE", 2))
    await asyncio.sleep(0)
    assert not racing.done()
    await first.__aexit__(None, None, None)  # rolled back: the second one may have the code
    assert (await asyncio.wait_for(racing, 5)).init_count == 2
    await second.commit()
    await second.__aexit__(None, None, None)
    assert database.coupons["RACE"].init_count == 2


async def test_recording_a_command_twice_is_a_conflict() -> None:
    database = FakeDatabase()
    outcome = Outcome(
        command_message_id="m",
        command="coupon.redeem",
        routing_key="coupon.redeemed",
        body=b"{}",
        occurred_at=datetime.now(UTC),
    )
    async with FakeUnitOfWork(database) as uow, FakeUnitOfWork(database) as other:
        assert await uow.processed.record([outcome]) is True
        assert await uow.processed.outcomes(["m"]) == {"m": outcome}, "own writes are seen"
        assert await other.processed.outcomes(["m"]) == {}, "not visible before commit"
        await uow.commit()
    async with FakeUnitOfWork(database) as uow:
        assert await uow.processed.outcomes(["m", "other"]) == {"m": outcome}
        assert await uow.processed.record([outcome]) is False
