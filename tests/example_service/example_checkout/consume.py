import logging
from collections import Counter

from contracts import CouponRedeemed
from contracts.client import CouponClient, UnknownEvent

log = logging.getLogger(__name__)


async def tally_redemptions(
    client: CouponClient, totals: Counter[str], until: int, queue: str = "checkout.redemptions"
) -> None:
    """Count redemptions per code from a durable queue of this service's own. An event is
    acknowledged only once this loop's body is done with it: if it raises, the event stays in
    the queue and comes again; `dedupe` skips an outcome the worker published twice."""
    async with client.subscribe(["coupon.redeemed"], queue=queue, dedupe=10_000) as events:
        async for received in events:
            if isinstance(received.event, CouponRedeemed):
                totals[received.event.code] += 1
            elif isinstance(received.event, UnknownEvent):
                log.warning("unknown event %s: %s", received.routing_key, received.event.reason)
            if sum(totals.values()) >= until:
                break
