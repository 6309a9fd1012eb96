import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from example_checkout.orders import checkout, place_order, relay_redeems
from example_checkout.redemptions import tally_redemptions
from example_checkout.store import Base, Order, Redemptions, inbox, outbox
from sqlalchemy import func, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from contracts import RedeemCoupon
from contracts.client import CouponClient
from contracts.testing import CouponBackend, EventCollector


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


class PaymentDeclined(Exception):
    pass


async def test_an_order_and_its_redeem_commit_together_or_not_at_all(
    sessions: async_sessionmaker[AsyncSession],
    coupon_client: CouponClient,
    coupon_events: EventCollector,
) -> None:
    await coupon_client.create("OUTBOX-10", 10)
    await checkout(sessions, "2001", "OUTBOX-10")
    with pytest.raises(PaymentDeclined):
        async with sessions.begin() as session:
            await place_order(session, "2002", "OUTBOX-10")
            raise PaymentDeclined  # after staging: the order and its redeem roll back
    relay = asyncio.create_task(relay_redeems(sessions, coupon_client))
    try:
        [redeemed] = await coupon_events.wait_for("coupon.redeemed")
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
    assert redeemed.causation_id == "order-2001"
    assert (await coupon_client.get("OUTBOX-10")).remaining_count == 9  # order 2002: no redeem
    async with sessions() as session:
        assert list(await session.scalars(select(Order.id))) == ["2001"]
        assert list(await session.scalars(select(outbox.table.c.message_id))) == ["order-2001"]


async def test_redemptions_are_tallied_once_even_when_published_twice(
    sessions: async_sessionmaker[AsyncSession],
    coupon_client: CouponClient,
    coupon_backend: CouponBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = f"{coupon_backend.topology.prefix}checkout.redemptions"
    async with coupon_client.subscribe(["coupon.redeemed"], queue=queue):
        pass  # the durable queue exists from now on: no event is missed
    await coupon_client.create("INBOX-5", 5)
    for order in ("1", "2", "3"):
        await checkout(sessions, order, "INBOX-5")
    relay = asyncio.create_task(relay_redeems(sessions, coupon_client))
    tally = asyncio.create_task(tally_redemptions(coupon_client, sessions, queue=queue, until=3))
    try:
        await asyncio.wait_for(tally, 30)
        # The relay died after publishing order 2 and before marking it: it comes again, with
        # the same message_id; the worker answers with the same event, the inbox skips it.
        await coupon_client.send(RedeemCoupon(code="INBOX-5"), message_id="order-2")
        await checkout(sessions, "4", "INBOX-5")
        with caplog.at_level(logging.INFO, "example_checkout.redemptions"):
            until_4 = tally_redemptions(coupon_client, sessions, queue=queue, until=4)
            await asyncio.wait_for(until_4, 30)
    finally:
        for task in (relay, tally):
            task.cancel()
        await asyncio.gather(relay, tally, return_exceptions=True)
        for name in (queue, f"{queue}.dead"):  # the subscriber's queue and its dead letters
            await coupon_backend.delete_queue(name)
    async with sessions() as session:
        assert list(await session.execute(select(Redemptions.code, Redemptions.count))) == [
            ("INBOX-5", 4)
        ]
        assert await session.scalar(select(func.count()).select_from(inbox.table)) == 4
    assert (await coupon_client.get("INBOX-5")).remaining_count == 1
    [seen_again] = [r.getMessage() for r in caplog.records if "seen_before" in r.getMessage()]
    assert seen_again.startswith("redemption_seen_before message_id=")
