"""A tally of redemptions with an inbox: each `coupon.redeemed` counted once, across restarts."""

import logging

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import CouponRedeemed
from contracts.client import CouponClient
from example_checkout.store import Redemptions, inbox

log = logging.getLogger(__name__)


async def count_redemption(session: AsyncSession, code: str) -> None:
    # The counter changes in SQL, never read-modify-write.
    statement = insert(Redemptions).values(code=code, count=1)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[Redemptions.code], set_={"count": Redemptions.count + 1}
        )
    )


async def tally_redemptions(
    client: CouponClient,
    sessions: async_sessionmaker[AsyncSession],
    queue: str = "checkout.redemptions",
    until: int | None = None,
) -> None:
    """Count redemptions per code from a durable queue of this service's own. The count and the
    event's id commit in one transaction; the event is acknowledged after that commit. Killed
    in between, the event comes again and the inbox knows it: it is counted once."""
    async with client.subscribe(["coupon.redeemed"], queue=queue) as events:
        async for received in events:
            async with sessions.begin() as session:
                async with inbox.once(session, received) as fresh:
                    if fresh and isinstance(received.event, CouponRedeemed):
                        await count_redemption(session, received.event.code)
                    elif not fresh:
                        log.info("redemption_seen_before message_id=%s", received.message_id)
                total = await session.scalar(select(func.sum(Redemptions.count)))
            if until is not None and (total or 0) >= until:
                break
