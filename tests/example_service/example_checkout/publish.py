from contracts import CreateCoupon
from contracts.client import CouponClient, DoesNotExist, Exhausted


async def start_campaign(client: CouponClient, code: str, redemptions: int) -> str:
    # Fire and forget: returns the command's message_id once the broker has it.
    return await client.send(CreateCoupon(code=code, init_count=redemptions))


async def apply_coupon(client: CouponClient, code: str, order_id: str) -> int | None:
    """Redeem `code` for an order: the redemptions left, or None if it cannot be used.
    The order's id is the message_id, so retrying after a timeout never redeems twice."""
    try:
        redeemed = await client.redeem(code, message_id=f"order-{order_id}", within=10)
    except (DoesNotExist, Exhausted):
        return None
    return redeemed.remaining_count
