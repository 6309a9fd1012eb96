"""The unit of work and its repositories, one contract for both implementations.

Every test here runs against the in-memory fakes (tests/fakes.py) and against PostgreSQL
(worker/db): the fakes are only worth the unit tests built on them if they keep the promises
the real adapters keep - commit only when told, rows loaded and locked in code order and held
until the end, a code created concurrently or a redeem that cannot be taken is a conflict
(never an oversell), and nothing visible to others before commit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fakes import FakeDatabase, FakeUnitOfWork
from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.ports import UnitOfWork
from worker.db import tables
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.domain.model import Coupon


@dataclass(frozen=True)
class Storage:
    unit_of_work: Callable[[], UnitOfWork]
    committed_coupons: Callable[[], Awaitable[dict[str, Coupon]]]  # as others see them
    committed_commands: Callable[[], Awaitable[set[str]]]
    wait_until_blocked: Callable[[], Awaitable[None]]  # another unit of work waits on a lock


def _fake_storage() -> Storage:
    database = FakeDatabase()

    async def coupons() -> dict[str, Coupon]:
        return dict(database.coupons)

    async def commands() -> set[str]:
        return set(database.processed)

    async def blocked() -> None:
        await asyncio.sleep(0.05)  # the waiter is parked on the holder's event by now

    return Storage(lambda: FakeUnitOfWork(database), coupons, commands, blocked)


BLOCKED_ON_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def _postgresql_storage(db: AsyncEngine) -> Storage:
    async def coupons() -> dict[str, Coupon]:
        columns = (
            tables.coupon.c.id,
            tables.coupon.c.code,
            tables.coupon.c.init_count,
            tables.coupon.c.remaining_count,
        )
        async with db.connect() as connection:
            rows = (await connection.execute(select(*columns))).all()
        return {row.code: Coupon(*row) for row in rows}

    async def commands() -> set[str]:
        async with db.connect() as connection:
            return set(
                (await connection.scalars(select(tables.processed_command.c.message_id))).all()
            )

    async def blocked() -> None:
        async with asyncio.timeout(30), db.connect() as connection:
            while not await connection.scalar(BLOCKED_ON_A_LOCK):
                await asyncio.sleep(0.02)
                await connection.rollback()  # pg_stat_activity is a snapshot per transaction

    return Storage(lambda: SqlAlchemyUnitOfWork(db), coupons, commands, blocked)


@pytest.fixture(params=["fake", "postgresql"])
def storage(request: pytest.FixtureRequest) -> Storage:
    if request.param == "fake":
        return _fake_storage()
    return _postgresql_storage(request.getfixturevalue("db"))


def coupon(code: str, init_count: int, remaining_count: int | None = None) -> Coupon:
    left = init_count if remaining_count is None else remaining_count
    return Coupon(uuid.uuid5(uuid.NAMESPACE_OID, code), code, init_count, left)


def outcome(message_id: str, body: bytes = b'{"ok": true}') -> Outcome:
    return Outcome(
        command_message_id=message_id,
        command="coupon.redeem",
        routing_key="coupon.redeemed",
        body=body,
        occurred_at=datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    )


async def committed(storage: Storage, *coupons: Coupon) -> None:
    async with storage.unit_of_work() as uow:
        await uow.coupons.create_many(coupons)
        await uow.commit()


# --- the unit of work ----------------------------------------------------------------------


async def test_changes_are_visible_to_others_only_after_commit(storage: Storage) -> None:
    async with storage.unit_of_work() as uow:
        await uow.coupons.create_many([coupon("A", 2)])
        await uow.processed.record([outcome("m-a")])
        assert await uow.coupons.get_many(["A"]) == {"A": coupon("A", 2)}, "own writes seen"
        assert set(await uow.processed.outcomes(["m-a"])) == {"m-a"}
        assert await storage.committed_coupons() == {}
        assert await storage.committed_commands() == set()
        await uow.commit()
    assert await storage.committed_coupons() == {"A": coupon("A", 2)}
    assert await storage.committed_commands() == {"m-a"}


async def test_exit_without_commit_discards_everything(storage: Storage) -> None:
    await committed(storage, coupon("KEEP", 2))
    async with storage.unit_of_work() as uow:
        await uow.coupons.create_many([coupon("DROP", 1)])
        await uow.coupons.redeem_many({"KEEP": 1})
        await uow.processed.record([outcome("m-drop")])
    assert await storage.committed_coupons() == {"KEEP": coupon("KEEP", 2)}
    assert await storage.committed_commands() == set()


async def test_an_exception_discards_the_work_and_propagates(storage: Storage) -> None:
    with pytest.raises(ValueError, match="boom"):
        async with storage.unit_of_work() as uow:
            await uow.coupons.create_many([coupon("DROP", 1)])
            raise ValueError("boom")
    assert await storage.committed_coupons() == {}


async def test_commit_outside_the_block_is_refused(storage: Storage) -> None:
    uow = storage.unit_of_work()
    with pytest.raises(RuntimeError):
        await uow.commit()
    async with uow:
        pass
    with pytest.raises(RuntimeError):
        await uow.commit()


# --- coupons --------------------------------------------------------------------------------


async def test_lock_many_and_get_many_return_the_existing_coupons_by_code(
    storage: Storage,
) -> None:
    await committed(storage, coupon("B", 3), coupon("A", 1), coupon("Case", 2))
    async with storage.unit_of_work() as uow:
        assert await uow.coupons.get_many([]) == {}
        assert await uow.coupons.lock_many([]) == {}
        found = await uow.coupons.get_many(["A", "B", "NOPE", "case"])  # codes are exact
        assert found == {"A": coupon("A", 1), "B": coupon("B", 3)}
        assert await uow.coupons.lock_many(["B", "A", "B", "NOPE"]) == found


async def test_creating_a_taken_code_is_a_conflict(storage: Storage) -> None:
    await committed(storage, coupon("TAKEN", 2))
    with pytest.raises(TransactionConflict):
        async with storage.unit_of_work() as uow:
            await uow.coupons.create_many([coupon("NEW", 1), coupon("TAKEN", 9)])
    assert await storage.committed_coupons() == {"TAKEN": coupon("TAKEN", 2)}


@pytest.mark.timeout(60)
async def test_a_concurrent_create_of_the_same_code_waits_for_the_first(
    storage: Storage,
) -> None:
    async with storage.unit_of_work() as first, storage.unit_of_work() as second:
        await first.coupons.create_many([coupon("RACE", 1)])
        assert await second.coupons.lock_many(["RACE"]) == {}, "an uncommitted row is unseen"
        racing = asyncio.create_task(second.coupons.create_many([coupon("RACE", 2)]))
        await storage.wait_until_blocked()
        assert not racing.done()
        await first.commit()
        with pytest.raises(TransactionConflict):  # the batch decided on a stale state: retry
            await asyncio.wait_for(racing, 30)

    async with storage.unit_of_work() as first, storage.unit_of_work() as second:
        await first.coupons.create_many([coupon("RACE-2", 1)])
        racing = asyncio.create_task(second.coupons.create_many([coupon("RACE-2", 2)]))
        await storage.wait_until_blocked()
        await first.__aexit__(None, None, None)  # the first one gives up: the second one wins
        await asyncio.wait_for(racing, 30)
        await second.commit()
    assert (await storage.committed_coupons())["RACE-2"] == coupon("RACE-2", 2)


async def test_redeem_many_is_guarded_and_all_or_nothing(storage: Storage) -> None:
    await committed(storage, coupon("A", 5, 2), coupon("B", 1))
    for impossible in ({"A": 2, "B": 2}, {"A": 1, "NOPE": 1}):
        with pytest.raises(TransactionConflict):
            async with storage.unit_of_work() as uow:
                await uow.coupons.lock_many(impossible)
                await uow.coupons.redeem_many(impossible)
        assert await storage.committed_coupons() == {"A": coupon("A", 5, 2), "B": coupon("B", 1)}

    async with storage.unit_of_work() as uow:
        await uow.coupons.lock_many(["A", "B"])
        await uow.coupons.redeem_many({"A": 2, "B": 1})
        await uow.coupons.redeem_many({})
        assert await uow.coupons.get_many(["A", "B"]) == {
            "A": coupon("A", 5, 0),
            "B": coupon("B", 1, 0),
        }
        await uow.commit()
    assert await storage.committed_coupons() == {"A": coupon("A", 5, 0), "B": coupon("B", 1, 0)}


@pytest.mark.timeout(60)
async def test_locked_coupons_are_held_until_the_unit_of_work_ends(storage: Storage) -> None:
    await committed(storage, coupon("HELD", 3), coupon("FREE", 3))
    async with storage.unit_of_work() as holder, storage.unit_of_work() as other:
        await holder.coupons.lock_many(["HELD"])
        assert await other.coupons.lock_many(["FREE"]) == {"FREE": coupon("FREE", 3)}
        assert await other.coupons.get_many(["HELD"]) == {"HELD": coupon("HELD", 3)}, (
            "a plain read does not wait"
        )
        waiting = asyncio.create_task(other.coupons.lock_many(["HELD", "FREE"]))
        await storage.wait_until_blocked()
        assert not waiting.done()
        await holder.coupons.redeem_many({"HELD": 1})
        await holder.commit()
        # The waiter gets the row as the holder committed it, not as it was when it asked.
        assert (await asyncio.wait_for(waiting, 30))["HELD"] == coupon("HELD", 3, 2)


@pytest.mark.timeout(120)
async def test_concurrent_units_of_work_never_oversell(storage: Storage) -> None:
    """50 units of work, each: lock the coupon, take one if any is left, commit."""
    await committed(storage, coupon("HOT", 25, 10))
    barrier = asyncio.Barrier(50)

    async def redeem() -> bool:
        async with storage.unit_of_work() as uow:
            await uow.coupons.get_many(["HOT"])  # holds a connection from here on
            await barrier.wait()
            left = (await uow.coupons.lock_many(["HOT"]))["HOT"].remaining_count
            if left == 0:
                return False
            await uow.coupons.redeem_many({"HOT": 1})
            await asyncio.sleep(0)  # let the others run while the row is locked
            await uow.commit()
            return True

    async with asyncio.timeout(90):
        granted = await asyncio.gather(*(redeem() for _ in range(50)))
    assert granted.count(True) == 10
    assert (await storage.committed_coupons())["HOT"].remaining_count == 0


# --- processed commands ---------------------------------------------------------------------


async def test_record_then_look_up_outcomes(storage: Storage) -> None:
    stored = [outcome("m-1", '{"code": "ÉTÉ"}'.encode()), outcome("m-2")]
    async with storage.unit_of_work() as uow:
        assert await uow.processed.record(stored) is True
        assert await uow.processed.record([]) is True
        await uow.commit()
    async with storage.unit_of_work() as uow:
        found = await uow.processed.outcomes(["m-1", "m-2", "m-unknown"])
        assert await uow.processed.outcomes([]) == {}
    assert found == {"m-1": stored[0], "m-2": stored[1]}
    assert found["m-1"].event_message_id == stored[0].event_message_id


async def test_recording_a_command_twice_reports_the_conflict(storage: Storage) -> None:
    async with storage.unit_of_work() as uow, storage.unit_of_work() as other:
        assert await uow.processed.record([outcome("m-1")]) is True
        assert await other.processed.outcomes(["m-1"]) == {}, "not visible before commit"
        await uow.commit()
    async with storage.unit_of_work() as uow:
        assert await uow.processed.record([outcome("m-2"), outcome("m-1", b"{}")]) is False
    async with storage.unit_of_work() as uow:
        kept = await uow.processed.outcomes(["m-1"])
    assert kept["m-1"].body == b'{"ok": true}', "the first outcome stays"


@pytest.mark.timeout(60)
async def test_a_concurrent_record_of_the_same_command_waits_then_conflicts(
    storage: Storage,
) -> None:
    async with storage.unit_of_work() as first, storage.unit_of_work() as second:
        assert await first.processed.record([outcome("m-race")])
        racing = asyncio.create_task(second.processed.record([outcome("m-race")]))
        await storage.wait_until_blocked()
        assert not racing.done()
        await first.commit()
        assert await asyncio.wait_for(racing, 30) is False
