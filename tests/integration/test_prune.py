"""Retention of processed_command: the repository's prune and `coupon-worker prune`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.support.cli import run_cli
from worker.db.repositories import ProcessedCommandsRepository
from worker.db.tables import ProcessedCommand

NOW = datetime.now(UTC)


async def _seed(sessions: async_sessionmaker[AsyncSession], ages_in_days: list[float]) -> None:
    async with sessions() as session, session.begin():
        session.add_all(
            ProcessedCommand(
                message_id=f"m-{n}",
                command="coupon.redeem",
                outcome_type="coupon.redeemed",
                outcome_body="{}",
                processed_at=NOW - timedelta(days=age),
            )
            for n, age in enumerate(ages_in_days)
        )


async def _left(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(ProcessedCommand.message_id).order_by(ProcessedCommand.message_id)
        )
        return list(rows)


async def test_prune_deletes_the_oldest_rows_before_the_cutoff_a_batch_at_a_time(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _seed(sessions, [40, 35, 31, 29, 1, 0])  # m-0 … m-5
    cutoff = NOW - timedelta(days=30)
    async with sessions() as session, session.begin():
        first = await ProcessedCommandsRepository(session).prune(cutoff, limit=2)
    assert first == 2
    assert await _left(sessions) == ["m-2", "m-3", "m-4", "m-5"]  # the two oldest went first
    async with sessions() as session, session.begin():
        second = await ProcessedCommandsRepository(session).prune(cutoff, limit=2)
    assert second == 1
    assert await _left(sessions) == ["m-3", "m-4", "m-5"]


async def test_prune_without_commit_deletes_nothing(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _seed(sessions, [40, 50])
    async with sessions() as session:
        assert await ProcessedCommandsRepository(session).prune(NOW, limit=10) == 2
        await session.rollback()
    assert await _left(sessions) == ["m-0", "m-1"]


async def test_cli_prune_keeps_the_retention_window(
    sessions: async_sessionmaker[AsyncSession], db: AsyncEngine, database_url: str
) -> None:
    await _seed(sessions, [90, 60, 45, 31, 30.5, 29, 2, 0])
    finished = await run_cli(
        "prune", "--older-than-days", "30", "--batch-size", "2", DATABASE_URL=database_url
    )
    assert finished.returncode == 0, finished.output
    [record] = [
        json.loads(line)
        for line in finished.stdout.splitlines() + finished.stderr.splitlines()
        if "processed_commands_pruned" in line
    ]
    assert record["deleted"] == 5
    assert await _left(sessions) == ["m-5", "m-6", "m-7"]
    async with db.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(ProcessedCommand)) == 3


async def test_cli_prune_refuses_a_window_under_a_day(database_url: str) -> None:
    finished = await run_cli("prune", "--older-than-days", "0.5", DATABASE_URL=database_url)
    assert finished.returncode == 2
    assert "must be from 1 to 36500 days" in finished.stderr
    assert "Traceback" not in finished.output
