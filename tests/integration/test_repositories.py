"""Repositories on the real PostgreSQL: what they return, what they raise, what SQL they run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.support.database import truncate
from worker.app.outcomes import Outcome
from worker.db.repositories import CouponsRepository, ProcessedCommandsRepository
from worker.db.tables import Coupon
from worker.domain import model
from worker.domain.errors import AlreadyExists, DoesNotExist, Exhausted

Sessions = async_sessionmaker[AsyncSession]


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the block runs."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))  # (conn, cursor, statement, parameters, context, many)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


BLOCKED_ON_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


async def wait_until_blocked(engine: AsyncEngine, within: float = 30.0) -> None:
    """Until a connection of this test database waits on a lock held by another transaction."""
    async with asyncio.timeout(within), engine.connect() as connection:
        while not await connection.scalar(BLOCKED_ON_A_LOCK):
            await asyncio.sleep(0.02)
            await connection.rollback()  # pg_stat_activity is a snapshot per transaction


async def committed_coupon(sessions: Sessions, code: str, init_count: int) -> model.Coupon:
    async with sessions() as session, session.begin():
        return await CouponsRepository(session).create(code, init_count)


async def test_add_and_get_by_id(sessions: Sessions) -> None:
    async with sessions() as session:
        repository = CouponsRepository(session)
        added = await repository.add(Coupon(code="BASE-1", init_count=3, remaining_count=3))
        assert isinstance(added.id, uuid.UUID)  # the UUID primary key is generated on flush
        assert await repository.get_by_id(added.id) is added
        await session.commit()
    async with sessions() as session:
        found = await CouponsRepository(session).get_by_id(added.id)
        assert (found.code, found.init_count, found.remaining_count) == ("BASE-1", 3, 3)
        assert found.created_at is not None and found.created_at.tzinfo is not None
        missing = uuid.uuid4()
        with pytest.raises(DoesNotExist) as raised:
            await CouponsRepository(session).get_by_id(missing)
        assert str(missing) in raised.value.detail


async def test_create_and_get_by_code(sessions: Sessions) -> None:
    created = await committed_coupon(sessions, "Code_1-x", 5)
    assert isinstance(created, model.Coupon)
    assert (created.code, created.init_count, created.remaining_count) == ("Code_1-x", 5, 5)
    async with sessions() as session:
        repository = CouponsRepository(session)
        assert await repository.get_by_code("Code_1-x") == created
        with pytest.raises(DoesNotExist):
            await repository.get_by_code("code_1-x")  # codes are case-sensitive


async def test_a_duplicate_code_is_already_exists_and_the_transaction_goes_on(
    sessions: Sessions,
) -> None:
    await committed_coupon(sessions, "DUP", 2)
    async with sessions() as session, session.begin():
        repository = CouponsRepository(session)
        with pytest.raises(AlreadyExists) as raised:
            await repository.create("DUP", 9)
        assert raised.value.code == "DUP"
        # ON CONFLICT DO NOTHING: the transaction is not aborted, the batch can go on.
        await repository.create("AFTER-DUP", 1)
    async with sessions() as session:
        repository = CouponsRepository(session)
        assert (await repository.get_by_code("DUP")).init_count == 2
        assert (await repository.get_by_code("AFTER-DUP")).init_count == 1


@pytest.mark.timeout(60)
async def test_a_duplicate_code_from_a_concurrent_transaction(
    sessions: Sessions, db: AsyncEngine
) -> None:
    async with sessions() as first, sessions() as second:
        await CouponsRepository(first).create("RACE", 1)
        # The second insert waits on the first transaction's unique-index entry...
        racing = asyncio.create_task(CouponsRepository(second).create("RACE", 2))
        await wait_until_blocked(db)
        assert not racing.done()
        await first.commit()
        # ...and, once it commits, is a clean AlreadyExists rather than an IntegrityError.
        with pytest.raises(AlreadyExists):
            await asyncio.wait_for(racing, 30)
        await second.rollback()

    async with sessions() as first, sessions() as second:
        await CouponsRepository(first).create("RACE-2", 1)
        racing = asyncio.create_task(CouponsRepository(second).create("RACE-2", 2))
        await wait_until_blocked(db)
        await first.rollback()  # the first one gives up: the second one wins
        created = await asyncio.wait_for(racing, 30)
        assert created.init_count == 2
        await second.commit()


async def test_redeem_decrements_in_one_guarded_statement(
    sessions: Sessions, db: AsyncEngine
) -> None:
    await committed_coupon(sessions, "ONE", 2)
    async with sessions() as session, session.begin():
        repository = CouponsRepository(session)
        await repository.get_by_code("ONE")  # the connection is checked out before we listen
        with statements(db) as sent:
            redeemed = await repository.redeem("ONE")
        assert redeemed.remaining_count == 1
        assert len(sent) == 1, sent
        sql = " ".join(sent[0].split())
        assert sql.startswith("UPDATE coupon SET remaining_count=(coupon.remaining_count - ")
        assert "coupon.remaining_count > " in sql
        assert "RETURNING" in sql
        assert "SELECT" not in sql
    async with sessions() as session:
        assert (await CouponsRepository(session).get_by_code("ONE")).remaining_count == 1


async def test_redeem_to_exhaustion_and_unknown(sessions: Sessions) -> None:
    created = await committed_coupon(sessions, "TWO", 2)
    async with sessions() as session, session.begin():
        repository = CouponsRepository(session)
        first = await repository.redeem("TWO")
        second = await repository.redeem("TWO")
        assert (first.remaining_count, second.remaining_count) == (1, 0)
        assert first.id == second.id == created.id
        with pytest.raises(Exhausted):
            await repository.redeem("TWO")
        with pytest.raises(DoesNotExist):
            await repository.redeem("NOT-THERE")
        assert (await repository.get_by_code("TWO")).remaining_count == 0


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ({"init_count": 3, "remaining_count": -1}, "ck_coupon_remaining_count_not_negative"),
        ({"init_count": 3, "remaining_count": 4}, "ck_coupon_remaining_count_at_most_init"),
        ({"init_count": 0, "remaining_count": 0}, "ck_coupon_init_count_positive"),
    ],
)
async def test_check_constraints_reject_bad_rows(
    db: AsyncEngine, values: dict[str, int], constraint: str
) -> None:
    with pytest.raises(IntegrityError) as raised:
        async with db.begin() as connection:
            await connection.execute(insert(Coupon).values(id=uuid.uuid4(), code="BAD", **values))
    assert constraint in str(raised.value)


@pytest.mark.parametrize(
    ("change", "constraint"),
    [
        ({"remaining_count": Coupon.remaining_count - 6}, "ck_coupon_remaining_count_not_negative"),
        ({"remaining_count": Coupon.init_count + 1}, "ck_coupon_remaining_count_at_most_init"),
    ],
)
async def test_check_constraints_reject_bad_updates(
    sessions: Sessions, db: AsyncEngine, change: dict[str, Any], constraint: str
) -> None:
    await committed_coupon(sessions, "GUARDED", 5)
    with pytest.raises(IntegrityError) as raised:
        async with db.begin() as connection:
            await connection.execute(update(Coupon).where(Coupon.code == "GUARDED").values(change))
    assert constraint in str(raised.value)
    async with db.connect() as connection:
        remaining = await connection.scalar(
            select(Coupon.remaining_count).where(Coupon.code == "GUARDED")
        )
    assert remaining == 5


async def test_the_unique_code_is_enforced_by_the_database(db: AsyncEngine) -> None:
    row = {"code": "UNIQUE", "init_count": 1, "remaining_count": 1}
    async with db.begin() as connection:
        await connection.execute(insert(Coupon).values(id=uuid.uuid4(), **row))
    with pytest.raises(IntegrityError) as raised:
        async with db.begin() as connection:
            await connection.execute(insert(Coupon).values(id=uuid.uuid4(), **row))
    assert "uq_coupon_code" in str(raised.value)


# --- processed commands ------------------------------------------------------------------


def outcome(message_id: str, body: bytes = b'{"ok": true}') -> Outcome:
    return Outcome(
        command_message_id=message_id,
        command="coupon.redeem",
        routing_key="coupon.redeemed",
        body=body,
        occurred_at=datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    )


async def test_record_then_look_up_outcomes(sessions: Sessions) -> None:
    stored = [outcome("m-1", '{"code": "ÉTÉ"}'.encode()), outcome("m-2")]
    async with sessions() as session, session.begin():
        assert await ProcessedCommandsRepository(session).record(stored) is True
        assert await ProcessedCommandsRepository(session).record([]) is True
    async with sessions() as session:
        repository = ProcessedCommandsRepository(session)
        found = await repository.outcomes(["m-1", "m-2", "m-unknown"])
        assert await repository.outcomes([]) == {}
    assert found == {"m-1": stored[0], "m-2": stored[1]}
    assert found["m-1"].event_message_id == stored[0].event_message_id


async def test_recording_a_command_twice_reports_the_conflict(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        assert await ProcessedCommandsRepository(session).record([outcome("m-1")])
    async with sessions() as session, session.begin():
        repository = ProcessedCommandsRepository(session)
        assert await repository.record([outcome("m-2"), outcome("m-1", b"{}")]) is False
    async with sessions() as session:
        kept = await ProcessedCommandsRepository(session).outcomes(["m-1"])
    assert kept["m-1"].body == b'{"ok": true}', "the first outcome stays"


@pytest.mark.timeout(60)
async def test_a_concurrent_record_of_the_same_command_waits_then_conflicts(
    sessions: Sessions, db: AsyncEngine
) -> None:
    async with sessions() as first, sessions() as second:
        assert await ProcessedCommandsRepository(first).record([outcome("m-race")])
        racing = asyncio.create_task(
            ProcessedCommandsRepository(second).record([outcome("m-race")])
        )
        await wait_until_blocked(db)
        assert not racing.done()
        await first.commit()
        assert await asyncio.wait_for(racing, 30) is False
        await second.rollback()


async def test_truncate_helper_leaves_empty_tables(db: AsyncEngine, sessions: Sessions) -> None:
    await committed_coupon(sessions, "GONE", 1)
    await truncate(db)
    async with sessions() as session:
        with pytest.raises(DoesNotExist):
            await CouponsRepository(session).get_by_code("GONE")
