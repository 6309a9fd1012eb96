"""The alembic migration the client guide shows for the outbox and inbox tables (a file of the
example service, included verbatim) creates exactly what `Outbox` and `Inbox` declare: alembic's
own comparison finds no difference, and its downgrade removes them."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, MetaData, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.inbox import Inbox
from contracts.outbox import Outbox
from tests.support.database import create_database, drop_database
from tests.support.services import Services

MIGRATION = (
    Path(__file__).parents[1] / "example_service" / "alembic" / "0001_coupon_outbox_inbox.py"
)


def migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("coupon_outbox_inbox_migration", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def empty_database(services: Services) -> AsyncIterator[str]:
    url = await create_database(services.database_url)
    yield url
    await drop_database(services.database_url, url)


def run(step: Callable[[], None]) -> Callable[[Connection], list[Any]]:
    def in_context(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection)
        with Operations.context(context):
            step()
        metadata = MetaData()
        Outbox(metadata)
        Inbox(metadata)
        return [*compare_metadata(context, metadata), sorted(inspect(connection).get_table_names())]

    return in_context


async def test_the_documented_migration_creates_what_the_tables_declare(
    empty_database: str,
) -> None:
    module = migration()
    engine = create_async_engine(empty_database)
    try:
        async with engine.begin() as connection:
            *differences, tables = await connection.run_sync(run(module.upgrade))
        assert differences == []
        assert tables == ["coupon_inbox", "coupon_outbox"]
        async with engine.begin() as connection:
            *differences, tables = await connection.run_sync(run(module.downgrade))
        assert tables == []
        added = sorted(d[1].name for d in differences if d[0] == "add_table")
        assert added == ["coupon_inbox", "coupon_outbox"]  # alembic sees them missing now
    finally:
        await engine.dispose()
