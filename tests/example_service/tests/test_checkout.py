import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from example_checkout.consume import tally_redemptions
from example_checkout.publish import apply_coupon, start_campaign
from example_checkout.quickstart import spring_campaign

from contracts.client import CouponClient
from contracts.testing import CouponBackend, EventCollector, ReplayOutcome, assert_matches_golden

RECORDING = Path(__file__).parent / "recordings" / "black-friday.jsonl"


async def test_the_quick_start(coupon_client: CouponClient) -> None:
    assert await spring_campaign(coupon_client) == [
        "created SPRING-24 (2 left)",
        "order-1234: 1 left",
        "order-1234: 1 left",  # the same message_id: the same answer, no second use
        "order-1235: 0 left",
        "order-1236: refused, coupon 'SPRING-24' has no redemptions left",
    ]


async def test_a_coupon_is_applied_once_per_order(
    coupon_client: CouponClient, coupon_events: EventCollector
) -> None:
    await start_campaign(coupon_client, "BF-10", 2)
    await coupon_events.wait_for("coupon.created")
    assert await apply_coupon(coupon_client, "BF-10", "1001") == 1
    assert await apply_coupon(coupon_client, "BF-10", "1001") == 1  # a retry: no second use
    assert await apply_coupon(coupon_client, "BF-10", "1002") == 0
    assert await apply_coupon(coupon_client, "BF-10", "1003") is None  # exhausted
    assert await apply_coupon(coupon_client, "NO-SUCH", "1004") is None


async def test_redemptions_are_tallied_from_events(
    coupon_client: CouponClient, coupon_backend: CouponBackend
) -> None:
    totals: Counter[str] = Counter()
    queue = f"{coupon_backend.topology.prefix}checkout.redemptions"
    async with coupon_client.subscribe(["coupon.redeemed"], queue=queue):
        pass  # the durable queue exists from now on: no event is missed
    await coupon_client.create("BF-20", 5)
    tally = asyncio.create_task(tally_redemptions(coupon_client, totals, until=3, queue=queue))
    try:
        for order in ("1", "2", "2", "3"):  # order 2 is retried: one redemption
            await apply_coupon(coupon_client, "BF-20", order)
        await asyncio.wait_for(tally, 30)
    finally:
        tally.cancel()
        await coupon_backend.delete_queue(queue)
    assert totals == {"BF-20": 3}


async def test_recorded_traffic_gives_the_golden_outcomes(
    coupon_replay: Callable[[Path], Awaitable[list[ReplayOutcome]]],
) -> None:
    outcomes = await coupon_replay(RECORDING)
    assert [o.routing_key for o in outcomes][:3] == ["coupon.created"] * 3
    assert_matches_golden(outcomes, "black-friday.jsonl")
