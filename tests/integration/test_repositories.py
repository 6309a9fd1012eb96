"""Repositories on the real PostgreSQL: the SQL they run and the constraints behind it.

What they return and raise, and how they lock, is in test_storage_contract.py (the same tests
for the fakes)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.database import truncate
from worker.app.outcomes import Outcome
from worker.db import tables
from worker.db.repositories import CouponsRepository, ProcessedCommandsRepository
from worker.domain import model


async def committed_coupons(db: AsyncEngine, *coupons: model.Coupon) -> None:
    async with db.begin() as connection:
        await CouponsRepository(connection).create_many(coupons)


def coupon(code: str, init_count: int) -> model.Coupon:
    return model.Coupon(uuid.uuid4(), code, init_count, init_count)


def outcome(message_id: str) -> Outcome:
    return Outcome(
        command_message_id=message_id,
        command="coupon.redeem",
        routing_key="coupon.redeemed",
        body=b"{}",
        occurred_at=datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC),
    )


@contextmanager
def executions(engine: AsyncEngine) -> Iterator[list[tuple[str, object]]]:
    """(SQL text, compiled form) of every statement the engine runs while the block runs; the
    compiled form is the very same object each time SQLAlchemy's compiled cache is hit."""
    seen: list[tuple[str, object]] = []

    def record(*args: Any) -> None:
        # (conn, cursor, statement, parameters, context, executemany)
        seen.append((" ".join(str(args[2]).split()), args[4].compiled))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def run_each_batch_method(db: AsyncEngine, size: int) -> dict[str, list[tuple[str, object]]]:
    """Every batch method once on `size` rows: what each sent to the database."""
    codes = [f"SIZE-{size}-{i}" for i in range(size)]
    sent: dict[str, list[tuple[str, object]]] = {}
    async with db.begin() as connection:
        coupons = CouponsRepository(connection)
        processed = ProcessedCommandsRepository(connection)
        await coupons.get_many(["warm"])  # the connection is checked out before we listen
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "create_many": lambda: coupons.create_many([coupon(c, 3) for c in codes]),
            "lock_many": lambda: coupons.lock_many(codes),
            "get_many": lambda: coupons.get_many(codes),
            "redeem_many": lambda: coupons.redeem_many(dict.fromkeys(codes, 2)),
            "record": lambda: processed.record([outcome(c) for c in codes]),
            "outcomes": lambda: processed.outcomes(codes),
        }
        for name, call in calls.items():
            with executions(db) as sent[name]:
                await call()
    async with db.connect() as connection:
        left = await CouponsRepository(connection).get_many(codes)
    assert [c.remaining_count for c in left.values()] == [1] * size
    return sent


async def test_each_batch_method_is_one_statement_of_one_compiled_text_whatever_the_size(
    db: AsyncEngine,
) -> None:
    seen: dict[str, set[tuple[str, object]]] = {}
    for size in (1, 7, 200):
        for name, sent in (await run_each_batch_method(db, size)).items():
            assert len(sent) == 1, (name, size, sent)
            seen.setdefault(name, set()).add(sent[0])
    # The same SQL text (asyncpg prepares it once per connection) and the very same compiled
    # object (SQLAlchemy compiled it once) for 1, 7 and 200 rows.
    assert len(seen) == 6
    for name, texts in seen.items():
        assert len(texts) == 1, (name, texts)


async def test_the_redeem_is_guarded_in_sql_and_locks_in_code_order(db: AsyncEngine) -> None:
    await committed_coupons(db, coupon("ONE", 2))
    async with db.begin() as connection:
        repository = CouponsRepository(connection)
        with executions(db) as sent:
            await repository.lock_many(["ONE"])
            await repository.redeem_many({"ONE": 2})
    [(lock, _), (redeem, _)] = sent
    assert lock.endswith("ORDER BY coupon.code FOR UPDATE")
    assert redeem.startswith("UPDATE coupon SET remaining_count=(coupon.remaining_count - ")
    assert "coupon.remaining_count >= " in redeem
    assert "unnest(" in redeem and "RETURNING" in redeem


async def test_a_message_id_too_long_for_its_column_is_refused_not_truncated(
    db: AsyncEngine,
) -> None:
    with pytest.raises(DBAPIError, match="too long"):
        async with db.begin() as connection:
            await ProcessedCommandsRepository(connection).record([outcome("m" * 256)])
    async with db.connect() as connection:
        assert await ProcessedCommandsRepository(connection).outcomes(["m" * 255]) == {}


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
            await connection.execute(
                insert(tables.coupon).values(id=uuid.uuid4(), code="BAD", **values)
            )
    assert constraint in str(raised.value)


@pytest.mark.parametrize(
    ("change", "constraint"),
    [
        (
            {"remaining_count": tables.coupon.c.remaining_count - 6},
            "ck_coupon_remaining_count_not_negative",
        ),
        (
            {"remaining_count": tables.coupon.c.init_count + 1},
            "ck_coupon_remaining_count_at_most_init",
        ),
    ],
)
async def test_check_constraints_reject_bad_updates(
    db: AsyncEngine, change: dict[str, Any], constraint: str
) -> None:
    await committed_coupons(db, coupon("GUARDED", 5))
    with pytest.raises(IntegrityError) as raised:
        async with db.begin() as connection:
            await connection.execute(
                update(tables.coupon).where(tables.coupon.c.code == "GUARDED").values(change)
            )
    assert constraint in str(raised.value)
    async with db.connect() as connection:
        remaining = await connection.scalar(
            select(tables.coupon.c.remaining_count).where(tables.coupon.c.code == "GUARDED")
        )
    assert remaining == 5


async def test_the_unique_code_is_enforced_by_the_database(db: AsyncEngine) -> None:
    row = {"code": "UNIQUE", "init_count": 1, "remaining_count": 1}
    async with db.begin() as connection:
        await connection.execute(insert(tables.coupon).values(id=uuid.uuid4(), **row))
    with pytest.raises(IntegrityError) as raised:
        async with db.begin() as connection:
            await connection.execute(insert(tables.coupon).values(id=uuid.uuid4(), **row))
    assert "uq_coupon_code" in str(raised.value)


async def test_truncate_helper_leaves_empty_tables(db: AsyncEngine) -> None:
    await committed_coupons(db, coupon("GONE", 1))
    await truncate(db)
    async with db.connect() as connection:
        assert await CouponsRepository(connection).get_many(["GONE"]) == {}
