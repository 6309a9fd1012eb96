"""Engine and session factory, built from settings by the composition root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from worker.db.transience import is_demoted_primary
from worker.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
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
    event.listen(engine.sync_engine, "handle_error", _demoted_primary_is_a_disconnect)
    return engine


def _demoted_primary_is_a_disconnect(context: ExceptionContext) -> None:
    """A write refused as read-only means the node became a standby (a failover demoted it).
    Its connections still answer `pool_pre_ping`, so, unless they are thrown away, the pool
    would keep handing them out; as a disconnect, SQLAlchemy invalidates the pool and the next
    connection goes through the host list again (`target_session_attrs=read-write`)."""
    if is_demoted_primary(context.original_exception):
        context.is_disconnect = True


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
