"""The inbox (contracts.inbox) against the real PostgreSQL and RabbitMQ: an event's effect and
its record commit together or not at all, once per consumer, also when the same event arrives
twice at the same moment or comes again after the consumer failed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aio_pika
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts.client import connect
from contracts.received import ReceivedEvent, read_received
from tests.support.broker import Broker
from tests.support.client_tables import effects, fresh_client_tables, inbox
from tests.support.services import Services

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def client_sessions(db: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    await fresh_client_tables(db)
    return async_sessionmaker(db, expire_on_commit=False)


def event(message_id: str | None) -> ReceivedEvent:
    body = b'{"id": "00000000-0000-0000-0000-000000000001", "code": "A", "remaining_count": 1}'
    return read_received("coupon.redeemed", body, message_id=message_id)


async def apply(
    sessions: async_sessionmaker[AsyncSession], received: ReceivedEvent, consumer: str = "default"
) -> bool:
    async with (
        sessions.begin() as session,
        inbox.once(session, received, consumer=consumer) as fresh,
    ):
        if fresh:
            await session.execute(insert(effects).values(note=str(received.message_id)))
    return fresh


async def notes(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        return list(await session.scalars(select(effects.c.note).order_by(effects.c.id)))


async def recorded(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(inbox.table)) or 0)


async def test_an_event_is_fresh_once_per_consumer(
    client_sessions: async_sessionmaker[AsyncSession],
) -> None:
    assert await apply(client_sessions, event("e-1")) is True
    assert await apply(client_sessions, event("e-1")) is False
    assert await apply(client_sessions, event("e-1"), consumer="audit") is True
    assert await notes(client_sessions) == ["e-1", "e-1"]
    async with client_sessions() as session:
        assert await inbox.seen(session, "e-1") and not await inbox.seen(session, "e-2")


async def test_the_record_rolls_back_with_the_effect(
    client_sessions: async_sessionmaker[AsyncSession],
) -> None:
    with pytest.raises(RuntimeError):
        async with client_sessions.begin() as session:
            async with inbox.once(session, event("e-1")) as fresh:
                assert fresh
                await session.execute(insert(effects).values(note="half"))
            raise RuntimeError("the consumer's commit fails")
    assert await recorded(client_sessions) == 0 and await notes(client_sessions) == []
    assert await apply(client_sessions, event("e-1")) is True  # it comes again: still fresh


async def test_a_failed_block_leaves_no_record_even_when_the_caller_commits_the_rest(
    client_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with client_sessions.begin() as session:
        await session.execute(insert(effects).values(note="before"))
        with pytest.raises(ValueError, match="bad event"):
            async with inbox.once(session, event("e-1")):
                await session.execute(insert(effects).values(note="inside"))
                raise ValueError("bad event")
    assert await notes(client_sessions) == ["before"]
    assert await recorded(client_sessions) == 0


async def test_the_same_event_twice_at_once_is_applied_once(
    client_sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The second transaction's insert waits for the first one's row lock, then sees it."""
    first_recorded, release = asyncio.Event(), asyncio.Event()

    async def slow() -> bool:
        async with client_sessions.begin() as session, inbox.once(session, event("e-1")) as fresh:
            first_recorded.set()
            await release.wait()
            await session.execute(insert(effects).values(note="slow"))
        return fresh

    slow_task = asyncio.create_task(slow())
    await first_recorded.wait()
    fast_task = asyncio.create_task(apply(client_sessions, event("e-1")))
    await asyncio.sleep(0.3)
    assert not fast_task.done()  # waiting for the first transaction
    release.set()
    assert await slow_task is True and await fast_task is False
    assert await notes(client_sessions) == ["slow"]


@pytest.mark.parametrize(
    ("message_id", "consumer", "match"),
    [
        (None, "default", "without message_id"),
        ("", "default", "without message_id"),
        ("é" * 200, "default", "255 bytes"),
        ("e-1", "", "consumer"),
        ("e-1", "c" * 129, "consumer"),
    ],
)
async def test_an_event_it_cannot_recognise_again_is_refused(
    client_sessions: async_sessionmaker[AsyncSession],
    message_id: str | None,
    consumer: str,
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        await apply(client_sessions, event(message_id), consumer=consumer)
    assert await recorded(client_sessions) == 0 and await notes(client_sessions) == []


async def test_old_ids_are_pruned(client_sessions: async_sessionmaker[AsyncSession]) -> None:
    for n in range(3):
        await apply(client_sessions, event(f"e-{n}"))
    async with client_sessions.begin() as session:
        await session.execute(
            update(inbox.table)
            .where(inbox.table.c.message_id != "e-2")
            .values(received_at=func.now() - timedelta(days=2))
        )
    async with client_sessions.begin() as session:
        assert await inbox.prune(session, older_than=timedelta(days=1)) == 2
    async with client_sessions() as session:
        assert list(await session.scalars(select(inbox.table.c.message_id))) == ["e-2"]


async def test_with_a_durable_subscription_each_event_takes_effect_once(
    client_sessions: async_sessionmaker[AsyncSession], broker: Broker, services: Services
) -> None:
    """Events published twice (as the worker does when it answers a repeat) and an event whose
    first handling fails after its record was written: each takes effect exactly once, and the
    subscription acknowledges an event only after the transaction committed."""
    queue = f"{broker.topology.prefix}billing.coupons"
    exchange = await broker.ch.get_exchange(broker.topology.events_exchange, ensure=False)
    client = await connect(services.amqp_url, broker.topology.prefix)
    failed_once: set[str] = set()

    async def consume(until: int) -> None:
        seen = 0
        async with client.subscribe(["coupon.redeemed"], queue=queue) as events:
            async for received in events:
                seen += 1
                async with client_sessions.begin() as session:
                    async with inbox.once(session, received) as fresh:
                        if fresh:
                            await session.execute(insert(effects).values(note=received.message_id))
                    if received.message_id == "e-3" and "e-3" not in failed_once:
                        failed_once.add("e-3")
                        raise RuntimeError("the effect's commit fails")
                if seen >= until:
                    break

    try:
        # The durable queue exists from now on: no event is missed.
        async with client.subscribe(["coupon.redeemed"], queue=queue):
            pass
        for message_id in ("e-1", "e-2", "e-1", "e-3", "e-2"):
            await exchange.publish(
                aio_pika.Message(
                    event(message_id).body, message_id=message_id, type="coupon.redeemed"
                ),
                "coupon.redeemed",
            )
        with pytest.raises(RuntimeError, match="commit fails"):
            await asyncio.wait_for(consume(until=5), 30)
        await asyncio.wait_for(consume(until=2), 30)  # e-3 again (redelivered), then e-2
        assert await broker.depth(queue) == 0
    finally:
        await client.close()
        await broker.ch.queue_delete(queue)
        await broker.ch.queue_delete(f"{queue}.dead")
    assert sorted(await notes(client_sessions)) == ["e-1", "e-2", "e-3"]
    assert await recorded(client_sessions) == 3
