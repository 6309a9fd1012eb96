"""Engine and session factory, built from settings by the composition root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from worker.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_pre_ping=True,  # after an outage, stale connections are replaced, not used
        pool_timeout=30,
        hide_parameters=True,  # never put bound values (codes, ids) into error strings
        connect_args={
            "timeout": 5,
            "command_timeout": 60,
            "server_settings": {"application_name": "coupon-worker"},
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine for the length of a command, disposed of afterwards."""
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        await engine.dispose()
