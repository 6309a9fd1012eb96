"""Several nodes behind one setting, against the real services (nothing is stopped here).

- The broker connection goes through an address list: a refused address is skipped at start,
  and every reconnect moves to the next address.
- A multi-host DATABASE_URL reaches the host that answers as a primary.
- A connection that turns read-only under the worker (a demoted primary) is an outage: the
  unit of work says so, and the pool drops the connection instead of handing it out again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from tests.support.services import Services
from worker.addresses import redact_url
from worker.app.failures import DependencyUnavailable
from worker.db.engine import create_engine
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.domain.model import Coupon
from worker.messaging.failover import FailoverConnection, connect_any
from worker.settings import Settings

REFUSED_AMQP = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


@pytest.fixture
async def connections() -> AsyncIterator[list[AbstractRobustConnection]]:
    opened: list[AbstractRobustConnection] = []
    yield opened
    for connection in opened:
        await connection.close()


async def test_a_refused_broker_address_is_skipped_at_start(
    services: Services, connections: list[AbstractRobustConnection]
) -> None:
    connection = await connect_any([REFUSED_AMQP, services.amqp_url], attempt_timeout=5)
    connections.append(connection)
    assert isinstance(connection, FailoverConnection)
    assert connection.node == redact_url(services.amqp_url)
    channel = await connection.channel()
    await channel.close()


async def test_no_broker_address_answers_is_the_last_error() -> None:
    with pytest.raises(ConnectionError):
        await connect_any([REFUSED_AMQP, REFUSED_AMQP.replace(":1/", ":2/")], attempt_timeout=5)


async def test_each_reconnect_goes_to_the_next_address(
    services: Services, connections: list[AbstractRobustConnection]
) -> None:
    # Two spellings of the one local broker around a refused address: which one the connection
    # is on shows in `position`.
    first, second = services.amqp_url, services.amqp_url.replace("127.0.0.1", "localhost")
    connection = await connect_any(
        [first, REFUSED_AMQP, second], attempt_timeout=5, reconnect_interval=0.2
    )
    connections.append(connection)
    assert isinstance(connection, FailoverConnection)
    assert connection.position == 0
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    reconnected = asyncio.Event()
    connection.reconnect_callbacks.add(lambda *_: reconnected.set())

    assert connection.transport is not None
    await connection.transport.connection.close()  # the node went away
    await asyncio.wait_for(reconnected.wait(), 30)
    assert connection.position == 2  # the refused address was tried and passed over
    restored = await channel.declare_queue(queue.name, passive=True)  # the channel came back
    assert restored.name == queue.name

    reconnected.clear()
    assert connection.transport is not None
    await connection.transport.connection.close()
    await asyncio.wait_for(reconnected.wait(), 30)
    assert connection.position == 0  # round-robin


def _coupon(code: str) -> Coupon:
    return Coupon(uuid.uuid5(uuid.NAMESPACE_OID, code), code, 1, 1)


def _multi_host(database_url: str, *hosts: str) -> str:
    url = make_url(database_url)
    credentials = url.username or "postgres"
    if url.password:
        credentials += f":{url.password}"
    return (
        f"postgresql+asyncpg://{credentials}@{','.join(hosts)}/{url.database}"
        "?target_session_attrs=read-write"
    )


async def test_a_multi_host_database_url_reaches_the_host_that_answers(
    database_url: str, settings: Settings
) -> None:
    url = make_url(database_url)
    live = f"{url.host}:{url.port or 5432}"
    multi = settings.model_copy(
        update={
            "database_url": Settings.model_validate(
                {"DATABASE_URL": _multi_host(database_url, "127.0.0.1:1", live)}
            ).database_url
        }
    )
    engine = create_engine(multi)
    try:
        async with engine.connect() as connection:
            port = await connection.scalar(text("SELECT inet_server_port()"))
            read_only = await connection.scalar(text("SHOW transaction_read_only"))
        assert port == (url.port or 5432) and read_only == "off"
    finally:
        await engine.dispose()


async def test_a_demoted_primary_is_an_outage_and_its_connections_are_dropped(
    settings: Settings, db: AsyncEngine
) -> None:
    engine = create_engine(settings.model_copy(update={"db_pool_size": 1}))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        # The one pooled connection turns read-only, as every session of a primary that a
        # failover demoted to a standby does.
        async with engine.connect() as connection:
            demoted_pid = await connection.scalar(text("SELECT pg_backend_pid()"))
            await connection.execute(text("SET SESSION default_transaction_read_only = on"))
            await connection.commit()

        # A read-only node must be waited out (DependencyUnavailable), not failed.
        with pytest.raises(DependencyUnavailable):
            async with SqlAlchemyUnitOfWork(sessions) as uow:
                await uow.coupons.create_many([_coupon("DEMOTED")])
                await uow.commit()

        async with sessions() as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
        assert pid != demoted_pid, "the pool handed out the demoted connection again"
        async with SqlAlchemyUnitOfWork(sessions) as uow:
            await uow.coupons.create_many([_coupon("PROMOTED")])
            await uow.commit()
    finally:
        await engine.dispose()
