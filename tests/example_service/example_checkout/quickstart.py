from contracts import CouponRedeemed, Exhausted, RedeemCoupon
from contracts.client import CouponClient


async def spring_campaign(client: CouponClient) -> list[str]:
    created = await client.create("SPRING-24", 2)  # waits: CouponCreated, or AlreadyExists
    log = [f"created {created.code} ({created.remaining_count} left)"]

    # The message_id is the idempotency key: sending the same one again (after a timeout, say)
    # never redeems twice, and is answered with the same outcome.
    for attempt in ("order-1234", "order-1234", "order-1235", "order-1236"):
        try:
            redeemed: CouponRedeemed = await client.redeem("SPRING-24", message_id=attempt)
        except Exhausted as error:
            log.append(f"{attempt}: refused, {error.detail}")
        else:
            log.append(f"{attempt}: {redeemed.remaining_count} left")

    # Fire and forget: the outcome arrives on coupon.events like every other.
    await client.send(RedeemCoupon(code="SPRING-24"))
    return log
