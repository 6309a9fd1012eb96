"""The SQLAlchemy unit of work on PostgreSQL: what becomes of database errors.

Commit, rollback, locking and conflicts are in test_storage_contract.py, which holds the fakes
to the same tests."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.app.failures import (
    DependencyUnavailable,
    TransactionConflict,
    TransientFailure,
)
from worker.db.unit_of_work import SqlAlchemyUnitOfWork


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
    db: AsyncEngine, statement: str, kind: type[TransientFailure]
) -> None:
    with pytest.raises(TransientFailure) as raised:
        async with SqlAlchemyUnitOfWork(db) as uow:
            await uow.coupons.connection.execute(text(statement))
    assert type(raised.value) is kind


async def test_other_database_errors_stay_what_they_are(db: AsyncEngine) -> None:
    with pytest.raises(DBAPIError) as raised:
        async with SqlAlchemyUnitOfWork(db) as uow:
            await uow.coupons.connection.execute(text("SELECT 1 / 0"))
    assert not isinstance(raised.value, TransientFailure)
    assert "division by zero" in str(raised.value)
