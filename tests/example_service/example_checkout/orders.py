"""Checkout with a transactional outbox: an order and its coupon's redeem commit together."""

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import RedeemCoupon
from contracts.client import CouponClient
from contracts.outbox import Relay
from example_checkout.store import Order, outbox


async def place_order(session: AsyncSession, order_id: str, coupon_code: str) -> Order:
    """Add the order and stage the redeem of its coupon, in the caller's transaction: if it
    commits, the relay publishes the redeem (even after a crash right after the commit); if it
    rolls back, the redeem is never sent. The order's id is the message_id, so a redeem the
    relay publishes twice is applied once."""
    order = Order(id=order_id, coupon_code=coupon_code)
    session.add(order)
    await outbox.stage(session, RedeemCoupon(code=coupon_code), message_id=f"order-{order_id}")
    return order


async def checkout(sessions: async_sessionmaker[AsyncSession], order_id: str, code: str) -> None:
    async with sessions.begin() as session:
        await place_order(session, order_id, code)


async def relay_redeems(sessions: async_sessionmaker[AsyncSession], client: CouponClient) -> None:
    """Publish what checkouts staged, until cancelled (as a process: `coupon-contracts relay`).
    Instead of a client, `contracts.outbox.AmqpPublisher(amqp_url)` publishes too."""
    await Relay(outbox, sessions, client).run()
