"""One typed verb per command. Handlers change state only through the unit of work's
repositories and never commit: the pipeline commits a whole batch at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from contracts.commands import Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.events import CouponCreated, CouponError, CouponFound, CouponRedeemed, Event
from worker.domain.errors import BusinessError
from worker.domain.ports import UnitOfWork


async def create_coupon(command: CreateCoupon, uow: UnitOfWork) -> Event:
    coupon = await uow.coupons.create(command.code, command.init_count)
    return CouponCreated(
        id=coupon.id,
        code=coupon.code,
        init_count=coupon.init_count,
        remaining_count=coupon.remaining_count,
    )


async def redeem_coupon(command: RedeemCoupon, uow: UnitOfWork) -> Event:
    coupon = await uow.coupons.redeem(command.code)
    return CouponRedeemed(id=coupon.id, code=coupon.code, remaining_count=coupon.remaining_count)


async def get_coupon(command: GetCoupon, uow: UnitOfWork) -> Event:
    coupon = await uow.coupons.get_by_code(command.code)
    return CouponFound(
        id=coupon.id,
        code=coupon.code,
        init_count=coupon.init_count,
        remaining_count=coupon.remaining_count,
    )


Handler = Callable[[Any, UnitOfWork], Awaitable[Event]]

HANDLERS: Final[Mapping[type[Command], Handler]] = {
    CreateCoupon: create_coupon,
    RedeemCoupon: redeem_coupon,
    GetCoupon: get_coupon,
}


async def handle(command: Command, uow: UnitOfWork) -> Event:
    """Run the command's handler; a business failure becomes its `coupon.error` event."""
    handler = HANDLERS[type(command)]
    try:
        return await handler(command, uow)
    except BusinessError as error:
        return CouponError(
            error=error.kind, detail=error.detail, command=command.routing_key, code=command.code
        )
