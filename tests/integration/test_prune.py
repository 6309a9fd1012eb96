"""Retention of processed_command: the repository's prune and `coupon-worker prune`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.cli import run_cli
from worker.db import tables
from worker.db.repositories import ProcessedCommandsRepository

NOW = datetime.now(UTC)


async def _seed(db: AsyncEngine, ages_in_days: list[float]) -> None:
    async with db.begin() as connection:
        await connection.execute(
            insert(tables.processed_command),
            [
                {
                    "message_id": f"m-{n}",
                    "command": "coupon.redeem",
                    "outcome_type": "coupon.redeemed",
                    "outcome_body": "{}",
                    "processed_at": NOW - timedelta(days=age),
                }
                for n, age in enumerate(ages_in_days)
            ],
        )


async def _left(db: AsyncEngine) -> list[str]:
    async with db.connect() as connection:
        rows = await connection.scalars(
            select(tables.processed_command.c.message_id).order_by(
                tables.processed_command.c.message_id
            )
        )
        return list(rows)


async def test_prune_deletes_the_oldest_rows_before_the_cutoff_a_batch_at_a_time(
    db: AsyncEngine,
) -> None:
    await _seed(db, [40, 35, 31, 29, 1, 0])  # m-0 … m-5
    cutoff = NOW - timedelta(days=30)
    async with db.begin() as connection:
        first = await ProcessedCommandsRepository(connection).prune(cutoff, limit=2)
    assert first == 2
    assert await _left(db) == ["m-2", "m-3", "m-4", "m-5"]  # the two oldest went first
    async with db.begin() as connection:
        second = await ProcessedCommandsRepository(connection).prune(cutoff, limit=2)
    assert second == 1
    assert await _left(db) == ["m-3", "m-4", "m-5"]


async def test_prune_without_commit_deletes_nothing(
    db: AsyncEngine,
) -> None:
    await _seed(db, [40, 50])
    async with db.connect() as connection:
        assert await ProcessedCommandsRepository(connection).prune(NOW, limit=10) == 2
        await connection.rollback()
    assert await _left(db) == ["m-0", "m-1"]


async def test_cli_prune_keeps_the_retention_window(db: AsyncEngine, database_url: str) -> None:
    await _seed(db, [90, 60, 45, 31, 30.5, 29, 2, 0])
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
    assert await _left(db) == ["m-5", "m-6", "m-7"]
    async with db.connect() as connection:
        assert (
            await connection.scalar(select(func.count()).select_from(tables.processed_command)) == 3
        )


async def test_cli_prune_refuses_a_window_under_a_day(database_url: str) -> None:
    finished = await run_cli("prune", "--older-than-days", "0.5", DATABASE_URL=database_url)
    assert finished.returncode == 2
    assert "must be from 1 to 36500 days" in finished.stderr
    assert "Traceback" not in finished.output
