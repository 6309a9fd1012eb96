"""The outbox (contracts.outbox) against the real PostgreSQL and RabbitMQ: staging in the
caller's transaction, the relay's order, confirms, parking, waiting, pruning, and several
relays at once. The commands land in the test's worker queue (no worker consumes it here), where
the test reads what was published, in the order it was."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts import CreateCoupon, GetCoupon, InvalidCommand, RedeemCoupon, RejectionCode
from contracts.commands import Command
from contracts.outbox import (
    AmqpPublisher,
    DuplicateMessageId,
    Relay,
    RelayPolicy,
)
from tests.support.blackhole_proxy import BlackholeProxy
from tests.support.broker import Broker
from tests.support.client_tables import SCHEMA, effects, fresh_client_tables, outbox
from tests.support.services import Services

pytestmark = pytest.mark.timeout(120)

FAST = RelayPolicy(poll_interval=0.05, retry_first=0.1, retry_most=0.5)


@pytest.fixture
async def client_sessions(db: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    await fresh_client_tables(db)
    return async_sessionmaker(db, expire_on_commit=False)


@pytest.fixture
async def publisher(services: Services, broker: Broker) -> AsyncIterator[AmqpPublisher]:
    publisher = AmqpPublisher(services.amqp_url, broker.topology.prefix, timeout=5)
    yield publisher
    await publisher.close()


async def stage_orders(
    sessions: async_sessionmaker[AsyncSession], count: int, start: int = 0
) -> list[str]:
    ids = []
    async with sessions.begin() as session:
        for n in range(start, start + count):
            await outbox.stage(session, RedeemCoupon(code=f"C{n % 7}"), message_id=f"order-{n}")
            ids.append(f"order-{n}")
    return ids


async def published(broker: Broker) -> list[AbstractIncomingMessage]:
    return await broker.drain_queue(broker.topology.worker_queue)


async def unsent(sessions: async_sessionmaker[AsyncSession]) -> int:
    c = outbox.table.c
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).where(c.sent_at.is_(None))) or 0)


async def test_a_staged_command_commits_with_the_callers_change_or_not_at_all(
    client_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with client_sessions.begin() as session:
        await session.execute(insert(effects).values(note="order 1"))
        await outbox.stage(session, RedeemCoupon(code="A"), message_id="order-1")
    with pytest.raises(RuntimeError):
        async with client_sessions.begin() as session:
            await session.execute(insert(effects).values(note="order 2"))
            await outbox.stage(session, RedeemCoupon(code="A"), message_id="order-2")
            raise RuntimeError("the order's own commit fails")
    async with client_sessions() as session:
        notes = list(await session.scalars(select(effects.c.note)))
        staged = list(await session.scalars(select(outbox.table.c.message_id)))
    assert notes == ["order 1"] and staged == ["order-1"]


@pytest.mark.parametrize(
    ("command", "message_id", "error", "match"),
    [
        (RedeemCoupon.model_construct(code="no spaces"), "m-1", InvalidCommand, "code"),
        (CreateCoupon.model_construct(code="A", init_count=0), "m-2", InvalidCommand, "init"),
        (GetCoupon(code="A"), "m-3", InvalidCommand, "reply_to"),
        (RedeemCoupon(code="A"), "", InvalidCommand, "message_id is required"),
        (RedeemCoupon(code="A"), "x" * 256, InvalidCommand, "longer than 255"),
        (RedeemCoupon(code="A"), "é" * 200, ValueError, "255 bytes"),
        ({"code": "A"}, "m-4", TypeError, "Command"),
    ],
)
async def test_staging_a_command_the_worker_would_refuse_raises_and_stages_nothing(
    client_sessions: async_sessionmaker[AsyncSession],
    command: object,
    message_id: str,
    error: type[Exception],
    match: str,
) -> None:
    async with client_sessions.begin() as session:
        with pytest.raises(error, match=match):
            await outbox.stage(session, command, message_id=message_id)  # type: ignore[arg-type]
        # The caller's transaction is still usable: nothing was sent to the database.
        await outbox.stage(session, RedeemCoupon(code="A"), message_id="after")
    async with client_sessions() as session:
        assert list(await session.scalars(select(outbox.table.c.message_id))) == ["after"]


async def test_an_invalid_command_is_rejected_with_the_workers_code(
    client_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with client_sessions.begin() as session:
        with pytest.raises(InvalidCommand) as raised:
            await outbox.stage(session, GetCoupon(code="A"), message_id="g")
    assert raised.value.code is RejectionCode.INVALID_COMMAND


async def test_a_message_id_staged_twice_raises_and_keeps_the_first(
    client_sessions: async_sessionmaker[AsyncSession],
) -> None:
    await stage_orders(client_sessions, 1)
    async with client_sessions.begin() as session:
        with pytest.raises(DuplicateMessageId, match="order-0"):
            await outbox.stage(session, RedeemCoupon(code="OTHER"), message_id="order-0")
    async with client_sessions() as session:
        bodies = list(await session.scalars(select(outbox.table.c.body)))
    assert bodies == [b'{"code":"C0"}']


async def test_the_relay_publishes_in_staging_order_confirmed_and_persistent(
    client_sessions: async_sessionmaker[AsyncSession], broker: Broker, publisher: AmqpPublisher
) -> None:
    ids = await stage_orders(client_sessions, 250)
    relay = Relay(outbox, client_sessions, publisher, RelayPolicy(batch_size=100))
    batches = [await relay.relay_batch() for _ in range(4)]
    assert [len(b.published) for b in batches] == [100, 100, 50, 0]
    messages = await published(broker)
    assert [m.message_id for m in messages] == ids
    first = messages[0]
    assert first.routing_key == "coupon.redeem" and first.type == "coupon.redeem"
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert first.content_type == "application/json" and first.body == b'{"code":"C0"}'
    assert await unsent(client_sessions) == 0


async def test_a_relay_that_dies_before_marking_publishes_again_with_the_same_ids(
    client_sessions: async_sessionmaker[AsyncSession], broker: Broker, publisher: AmqpPublisher
) -> None:
    """The worst moment: published (and confirmed), not yet marked sent. The batch's
    transaction never commits, so its rows are published again by the next relay."""
    ids = await stage_orders(client_sessions, 10)

    class Dies(Exception):
        pass

    class DiesAfterFour:
        calls = 0

        async def send(
            self,
            command: Command,
            *,
            message_id: str | None = None,
            correlation_id: str | None = None,
        ) -> str:
            sent = await publisher.send(
                command, message_id=message_id, correlation_id=correlation_id
            )
            self.calls += 1
            if self.calls == 4:
                raise Dies  # not a publishing failure: the relay does not handle it
            return sent

    with pytest.raises(Dies):
        await Relay(outbox, client_sessions, DiesAfterFour()).relay_batch()
    assert await unsent(client_sessions) == 10
    batch = await Relay(outbox, client_sessions, publisher).relay_batch()
    assert batch.published == ids
    assert [m.message_id for m in await published(broker)] == ids[:4] + ids


async def test_several_relays_share_the_rows_and_publish_each_once(
    client_sessions: async_sessionmaker[AsyncSession],
    broker: Broker,
    publisher: AmqpPublisher,
    services: Services,
) -> None:
    ids = await stage_orders(client_sessions, 600)
    other = AmqpPublisher(services.amqp_url, broker.topology.prefix, timeout=5)
    policy = RelayPolicy(batch_size=25)
    relays = [Relay(outbox, client_sessions, p, policy) for p in (publisher, other, publisher)]

    async def drain(relay: Relay) -> list[str]:
        mine: list[str] = []
        while await unsent(client_sessions):
            mine += (await relay.relay_batch()).published
        return mine

    try:
        shares = await asyncio.gather(*(drain(relay) for relay in relays))
    finally:
        await other.close()
    everything = [message_id for share in shares for message_id in share]
    assert sorted(everything) == sorted(ids)  # each row published by exactly one relay
    assert all(len(share) >= 25 for share in shares), [len(s) for s in shares]
    counted = Counter(m.message_id for m in await published(broker))
    assert set(counted) == set(ids) and set(counted.values()) == {1}


async def test_a_row_the_worker_would_refuse_is_parked_with_the_reason_and_the_rest_go_on(
    client_sessions: async_sessionmaker[AsyncSession], broker: Broker, publisher: AmqpPublisher
) -> None:
    await stage_orders(client_sessions, 1, start=0)
    async with client_sessions.begin() as session:  # written by hand, past `stage`
        await session.execute(
            insert(outbox.table).values(
                message_id="by-hand", routing_key="coupon.redeem", body=b'{"code": 5}'
            )
        )
    await stage_orders(client_sessions, 1, start=1)
    batch = await Relay(outbox, client_sessions, publisher).relay_batch()
    assert batch.published == ["order-0", "order-1"] and batch.parked == ["by-hand"]
    async with client_sessions() as session:
        [(message_id, reason)] = await outbox.parked(session)
    assert message_id == "by-hand" and reason.startswith("InvalidCommand: code:")
    assert [m.message_id for m in await published(broker)] == ["order-0", "order-1"]
    # Parked rows stay parked, whatever the next batches do.
    assert (await Relay(outbox, client_sessions, publisher).relay_batch()).parked == []


async def test_a_command_the_broker_returns_is_parked_and_can_be_released(
    client_sessions: async_sessionmaker[AsyncSession],
    broker: Broker,
    services: Services,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exchange that routes nowhere: the broker returns the mandatory publish."""
    lonely = f"{broker.topology.prefix}lonely-"
    exchange = await broker.ch.declare_exchange(
        f"{lonely}coupon.commands", aio_pika.ExchangeType.TOPIC, auto_delete=True
    )
    await stage_orders(client_sessions, 2)
    refused = AmqpPublisher(services.amqp_url, lonely, timeout=5)
    try:
        with caplog.at_level(logging.ERROR, "contracts.outbox"):
            batch = await Relay(outbox, client_sessions, refused).relay_batch()
    finally:
        await refused.close()
        await exchange.delete()
    assert batch.parked == ["order-0", "order-1"] and batch.published == []
    async with client_sessions() as session:
        parked = await outbox.parked(session)
    assert [reason for _, reason in parked] == ["returned by the broker: 312 NO_ROUTE"] * 2
    assert "outbox_row_parked message_id=order-0" in caplog.text

    async with client_sessions.begin() as session:
        assert await outbox.release(session, ["order-1", "no-such-id"]) == 1
    publisher = AmqpPublisher(services.amqp_url, broker.topology.prefix, timeout=5)
    try:
        batch = await Relay(outbox, client_sessions, publisher).relay_batch()
    finally:
        await publisher.close()
    assert batch.published == ["order-1"]


async def test_a_relay_waits_for_an_unreachable_broker_says_so_and_loses_nothing(
    client_sessions: async_sessionmaker[AsyncSession],
    broker: Broker,
    services: Services,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker goes silent (a black hole: connections hang, no refusal) before the relay
    connects: its publishes time out, it says so once and waits; when the broker answers again
    everything staged meanwhile is published, once, in order."""
    proxy = BlackholeProxy.to(services.amqp_url)
    await proxy.start()
    proxy.blackhole()
    publisher = AmqpPublisher(proxy.through(services.amqp_url), broker.topology.prefix, timeout=1)
    relay = Relay(outbox, client_sessions, publisher, FAST)
    ids = await stage_orders(client_sessions, 5)
    with caplog.at_level(logging.INFO, "contracts.outbox"):
        task = asyncio.create_task(relay.run())
        try:
            await asyncio.sleep(3)
            assert await unsent(client_sessions) == 5
            ids += await stage_orders(client_sessions, 5, start=5)
            proxy.restore()
            await wait_until_sent(client_sessions)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await publisher.close()
            await proxy.close()
    assert [m.message_id for m in await published(broker)] == ids
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("outbox_broker_unreachable reason=TimeoutError")
    assert warnings[1:] == ["outbox_broker_reachable_again"]
    assert services.amqp_url.split("@")[0] not in caplog.text  # no credentials


async def wait_until_sent(sessions: async_sessionmaker[AsyncSession], within: float = 30) -> None:
    async with asyncio.timeout(within):
        while await unsent(sessions):  # noqa: ASYNC110 - the database is what changes
            await asyncio.sleep(0.05)


async def test_sent_rows_are_pruned_after_the_configured_age(
    client_sessions: async_sessionmaker[AsyncSession], broker: Broker, publisher: AmqpPublisher
) -> None:
    policy = RelayPolicy(prune_after=timedelta(hours=1))
    relay = Relay(outbox, client_sessions, publisher, policy)
    await stage_orders(client_sessions, 4)
    await relay.relay_batch()
    await stage_orders(client_sessions, 1, start=4)  # staged, not sent
    c = outbox.table.c
    async with client_sessions.begin() as session:
        await session.execute(
            update(outbox.table)
            .where(c.message_id.in_(["order-0", "order-1"]))
            .values(sent_at=func.now() - timedelta(hours=2))
        )
    assert await relay.prune() == 2
    async with client_sessions() as session:
        left = list(await session.scalars(select(c.message_id).order_by(c.id)))
    assert left == ["order-2", "order-3", "order-4"]


def test_relay_policy_refuses_nonsense() -> None:
    for bad in (
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"poll_interval": 0},
        {"retry_first": 2.0, "retry_most": 1.0},
        {"prune_after": timedelta(seconds=-1)},
    ):
        with pytest.raises(ValueError):
            RelayPolicy(**bad)


async def test_the_relay_command_publishes_and_stops_on_sigterm(
    client_sessions: async_sessionmaker[AsyncSession],
    broker: Broker,
    services: Services,
    database_url: str,
) -> None:
    ids = await stage_orders(client_sessions, 3)
    env = {
        "COUPON_RELAY_DATABASE_URL": database_url,
        "COUPON_AMQP_URL": services.amqp_url,
        "PATH": "/usr/bin:/bin",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "contracts",
        "--prefix",
        broker.topology.prefix,
        "relay",
        "--schema",
        SCHEMA,
        "--poll-interval",
        "0.1",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_sent(client_sessions)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    assert "outbox_relay_started" in stderr.decode() and "outbox_relay_stopped" in stderr.decode()
    assert [m.message_id for m in await published(broker)] == ids


async def test_the_relay_command_needs_its_database_url_from_the_environment() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "contracts",
        "relay",
        env={"PATH": "/usr/bin:/bin"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert (
        "relay: set COUPON_RELAY_DATABASE_URL (read from the environment only)" in stderr.decode()
    )
