"""Alembic owns the schema: upgrade from empty, downgrade to nothing, and agree with the models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, String, Table, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.support.database import create_database, drop_database
from tests.support.services import Services
from worker.db import migrations
from worker.db.tables import metadata

# Catalog queries: fixed text, nothing interpolated.
TABLES = text(
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = 'public' ORDER BY table_name"
)
CONSTRAINTS = text(
    "SELECT c.conname, c.contype::text, t.relname, pg_get_constraintdef(c.oid) "
    "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
    "JOIN pg_namespace n ON n.oid = t.relnamespace "
    "WHERE n.nspname = 'public' ORDER BY c.conname"
)
INDEXES = text("SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname")
COLUMNS = text(
    "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
    "WHERE table_schema = 'public' AND table_name IN ('coupon', 'processed_command')"
)


@pytest.fixture
async def empty_database(services: Services) -> AsyncIterator[str]:
    """A brand-new database with nothing in it, dropped afterwards."""
    url = await create_database(services.database_url, prefix="coupon_migr")
    try:
        yield url
    finally:
        await drop_database(services.database_url, url)


@pytest.fixture
async def empty_engine(empty_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(empty_database)
    try:
        yield engine
    finally:
        await engine.dispose()


async def rows(engine: AsyncEngine, query: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in (await connection.execute(query)).all()]


async def model_differences(engine: AsyncEngine) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(compare)


@pytest.mark.timeout(120)
async def test_upgrade_from_empty_downgrade_to_base_and_upgrade_again(
    empty_engine: AsyncEngine,
) -> None:
    assert await rows(empty_engine, TABLES) == []
    assert await migrations.current_revision(empty_engine) is None

    migration = await migrations.upgrade(empty_engine)
    assert migration == migrations.Migration(before=None, after=migrations.head_revision())
    assert migration.changed
    assert await migrations.current_revision(empty_engine) == migrations.head_revision()
    await migrations.ensure_current(empty_engine)
    assert [t for (t,) in await rows(empty_engine, TABLES)] == [
        "alembic_version",
        "coupon",
        "processed_command",
    ]
    constraints = {
        name: (kind, table, text_)
        for name, kind, table, text_ in await rows(empty_engine, CONSTRAINTS)
    }
    assert constraints["pk_coupon"][:2] == ("p", "coupon")
    assert constraints["uq_coupon_code"] == ("u", "coupon", "UNIQUE (code)")
    assert constraints["pk_processed_command"] == (
        "p",
        "processed_command",
        "PRIMARY KEY (message_id)",
    )
    checks = {
        name: definition for name, (kind, _, definition) in constraints.items() if kind == "c"
    }
    assert checks == {
        "ck_coupon_init_count_positive": "CHECK ((init_count >= 1))",
        "ck_coupon_remaining_count_not_negative": "CHECK ((remaining_count >= 0))",
        "ck_coupon_remaining_count_at_most_init": "CHECK ((remaining_count <= init_count))",
    }
    assert "ix_processed_command_processed_at" in [i for (i,) in await rows(empty_engine, INDEXES)]
    columns = {
        (table, column): (kind, nullable)
        for table, column, kind, nullable in await rows(empty_engine, COLUMNS)
    }
    assert columns[("coupon", "id")] == ("uuid", "NO")
    assert columns[("coupon", "code")] == ("character varying", "NO")
    assert columns[("coupon", "created_at")] == ("timestamp with time zone", "NO")
    assert columns[("processed_command", "processed_at")] == ("timestamp with time zone", "NO")
    assert await model_differences(empty_engine) == []

    assert not (await migrations.upgrade(empty_engine)).changed  # already at head
    assert await migrations.downgrade(empty_engine, "base") == migrations.Migration(
        before=migrations.head_revision(), after=None
    )
    assert [t for (t,) in await rows(empty_engine, TABLES)] == ["alembic_version"]
    assert [table for _, _, table, _ in await rows(empty_engine, CONSTRAINTS)] == [
        "alembic_version"
    ]
    assert "ix_processed_command_processed_at" not in [
        i for (i,) in await rows(empty_engine, INDEXES)
    ]
    assert await migrations.current_revision(empty_engine) is None
    # The comparison sees real differences (so its empty answers above mean something).
    missing = {
        diff[1].name for diff in await model_differences(empty_engine) if diff[0] == "add_table"
    }
    assert missing == {"coupon", "processed_command"}

    await migrations.upgrade(empty_engine)
    assert await migrations.current_revision(empty_engine) == migrations.head_revision()
    assert await model_differences(empty_engine) == []


@pytest.mark.timeout(120)
async def test_replicas_migrating_together_do_not_race(empty_database: str) -> None:
    engines = [create_async_engine(empty_database) for _ in range(3)]
    try:
        await asyncio.gather(*(migrations.upgrade(engine) for engine in engines))
        for engine in engines:
            assert await migrations.current_revision(engine) == migrations.head_revision()
    finally:
        for engine in engines:
            await engine.dispose()


async def test_the_models_and_the_migrations_agree(engine: AsyncEngine) -> None:
    # The session database was migrated by alembic: the ORM models must not differ from it.
    assert await model_differences(engine) == []


async def test_ensure_current_refuses_an_unmigrated_database(empty_engine: AsyncEngine) -> None:
    with pytest.raises(migrations.SchemaMismatch) as raised:
        await migrations.ensure_current(empty_engine)
    message = str(raised.value)
    assert "no coupon schema" in message
    assert migrations.head_revision() in message
    assert "coupon-worker migrate" in message and "--migrate" in message
    assert "\n" not in message


async def test_ensure_current_refuses_a_schema_from_a_newer_worker(
    empty_engine: AsyncEngine,
) -> None:
    await migrations.upgrade(empty_engine)
    version = Table("alembic_version", MetaData(), Column("version_num", String(32)))
    async with empty_engine.begin() as connection:
        await connection.execute(update(version).values(version_num="ffffffffffff"))
    with pytest.raises(migrations.SchemaMismatch) as raised:
        await migrations.ensure_current(empty_engine)
    assert "ffffffffffff" in str(raised.value)
    assert "newer worker" in str(raised.value)
