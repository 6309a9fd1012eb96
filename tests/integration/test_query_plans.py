"""The repositories' lookups use the key's index however the table has grown since the worker's
connection first ran them.

asyncpg prepares every statement; after five executions PostgreSQL may switch a prepared
statement to a generic plan, made once for any parameters. Made while a table is empty, that
plan is a sequential scan, which the connection then keeps while the table grows (measured:
the pipeline's creates fell from 6,100/s to 310/s over 80,000 rows). The worker's engine asks
for a plan per execution (`worker.db.engine.CUSTOM_PLANS`); this test fails without it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.support.database import create_database, drop_database
from worker.db import migrations
from worker.db.engine import create_engine
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.settings import Settings

ROWS = 20_000


@pytest.fixture
async def empty_database(settings: Settings) -> AsyncIterator[str]:
    """A database of its own whose tables start empty, never analysed while the test runs."""
    admin_url = settings.database_url.get_secret_value()
    url = await create_database(admin_url, prefix="coupon_plans")
    engine = create_async_engine(url)
    try:
        await migrations.upgrade(engine)
        async with engine.begin() as connection:
            await connection.execute(
                text("ALTER TABLE processed_command SET (autovacuum_enabled = false)")
            )
    finally:
        await engine.dispose()
    yield url
    await drop_database(admin_url, url)


SEQUENTIAL_SCANS = text(
    "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_xact_user_tables"
    " WHERE relname = 'processed_command'"
)


async def sequential_scans_of_one_lookup(engine: AsyncEngine, keys: list[str]) -> int:
    """Sequential scans of processed_command made by one `select_by_keys` (the backend's own
    counters, read before and after it: nothing else on the server adds to them)."""
    async with SqlAlchemyUnitOfWork(engine) as uow:
        connection = uow.processed.connection
        before = int((await connection.execute(SEQUENTIAL_SCANS)).scalar_one())
        found = await uow.processed.outcomes(keys)
        after = int((await connection.execute(SEQUENTIAL_SCANS)).scalar_one())
        assert set(found) == {key for key in keys if key.startswith("m")}
        return after - before


async def test_lookups_use_the_index_after_the_table_grew(
    settings: Settings, empty_database: str
) -> None:
    engine = create_engine(
        settings.model_copy(update={"database_url": SecretStr(empty_database), "db_pool_size": 1})
    )
    try:
        # Ten lookups on the empty table, on the one pooled connection: past the five
        # executions after which PostgreSQL may settle on a generic plan.
        for _ in range(10):
            await sequential_scans_of_one_lookup(engine, ["absent"])
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO processed_command"
                    " (message_id, command, outcome_type, outcome_body, processed_at)"
                    " SELECT 'm' || g, 'coupon.create', 'coupon.created', '{}', :at"
                    " FROM generate_series(1, :rows) AS g"
                ),
                {"at": datetime.now(UTC), "rows": ROWS},
            )
        keys = ["m17", "m4242", f"absent-{uuid.uuid4()}"]
        assert await sequential_scans_of_one_lookup(engine, keys) == 0, (
            f"a lookup of {len(keys)} keys scanned all {ROWS} rows: a generic plan made while"
            " the table was empty"
        )
    finally:
        await engine.dispose()
