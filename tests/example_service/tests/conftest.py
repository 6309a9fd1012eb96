import os
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from example_checkout.store import Base
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine


@pytest_asyncio.fixture
async def sessions() -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The service's own tables in a PostgreSQL database of this test's own, dropped after it.
    CHECKOUT_DATABASE_URL: a database where this user may CREATE DATABASE."""
    admin_url = os.environ.get("CHECKOUT_DATABASE_URL")
    if not admin_url:
        pytest.fail(
            "set CHECKOUT_DATABASE_URL (postgresql+asyncpg://…): the outbox and inbox live there"
        )
    name = f"checkout_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))  # a name made above
    engine = create_async_engine(make_url(admin_url).set(database=name))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()
