"""The worker's engine on PostgreSQL: statement timeouts discard the connection, keepalive is on.

A silent server cannot be made here without a proxy (tests/faults/test_silent_peers.py does
that); a statement that outlives WORKER_DB_STATEMENT_TIMEOUT (`pg_sleep`) takes the same path
in the client: asyncpg's TimeoutError, then the engine's handling of it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.identity import coupon_id
from worker.app.failures import DependencyUnavailable
from worker.db import engine as engine_module
from worker.db.engine import create_engine
from worker.db.transience import transient_kind
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.domain.model import Coupon
from worker.settings import Settings


@pytest.fixture
async def bounded(settings: Settings) -> Any:
    engine = create_engine(
        settings.model_copy(update={"db_statement_timeout": 0.5, "db_pool_size": 2})
    )
    yield engine
    await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_statement_timeout_discards_the_connection_and_is_an_outage(
    bounded: AsyncEngine,
) -> None:
    before = await backend_pid(bounded)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        async with bounded.connect() as connection:
            await connection.execute(text("SELECT pg_sleep(5)"))
    assert time.monotonic() - started < 4, "the statement timeout did not bound the wait"
    assert transient_kind(raised.value) is DependencyUnavailable
    # The connection that timed out (and the pool's others) are replaced, not reused.
    assert await backend_pid(bounded) != before


async def test_a_statement_timeout_in_a_unit_of_work_is_a_transient_outage(
    bounded: AsyncEngine,
) -> None:
    with pytest.raises(DependencyUnavailable):
        async with SqlAlchemyUnitOfWork(bounded) as uow:
            await uow.coupons.connection.execute(text("SELECT pg_sleep(5)"))
    async with SqlAlchemyUnitOfWork(bounded) as uow:  # and the next one works
        code = "AFTER-TIMEOUT"
        await uow.coupons.create_many([Coupon(coupon_id(code), code, 1, 1)])
        await uow.commit()
    async with SqlAlchemyUnitOfWork(bounded) as uow:
        assert (await uow.coupons.get_many([code]))[code].remaining_count == 1


async def test_admin_engine_has_no_statement_timeout(settings: Settings) -> None:
    engine = create_engine(settings.model_copy(update={"db_statement_timeout": 0.2}), admin=True)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT pg_sleep(0.5)"))  # a migration's lock wait
    finally:
        await engine.dispose()


async def test_keepalive_on_both_ends(bounded: AsyncEngine) -> None:
    async with bounded.connect() as connection:
        raw = await connection.get_raw_connection()
        sock = raw.driver_connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        server = (await connection.execute(text("SHOW tcp_keepalives_idle"))).scalar_one()
        assert server == "10s" or server == "10"


async def terminate(settings: Settings, pid: int) -> None:
    """Ends one server backend, as a database restart or an idle-connection reaper would."""
    admin = create_engine(settings, admin=True)
    try:
        async with admin.connect() as connection:
            ended = await connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
            )
            assert ended.scalar_one() is True
    finally:
        await admin.dispose()


async def test_an_idle_connection_that_died_is_replaced_before_use(
    settings: Settings, bounded: AsyncEngine
) -> None:
    dead = await backend_pid(bounded)
    await terminate(settings, dead)
    await asyncio.sleep(engine_module.PING_AFTER_IDLE + 0.2)
    # Pinged at checkout (it was idle), found dead, replaced: the caller sees no error.
    assert await backend_pid(bounded) != dead


async def test_a_busy_connection_that_died_fails_one_unit_of_work_which_is_transient(
    settings: Settings, bounded: AsyncEngine
) -> None:
    dead = await backend_pid(bounded)
    await terminate(settings, dead)
    # Used again at once (not idle long enough to be pinged): the statement fails on the dead
    # connection, as an outage the retry policy retries; the next unit of work gets a new one.
    with pytest.raises(DependencyUnavailable):
        async with SqlAlchemyUnitOfWork(bounded) as uow:
            await uow.coupons.get_many(["ANY"])
    assert await backend_pid(bounded) != dead
