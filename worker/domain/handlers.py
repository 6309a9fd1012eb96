"""One typed verb per command. Handlers apply a command to the batch's working set in memory
and never touch the database: the pipeline loads the working set through the unit of work's
repositories before, and writes what changed in a few set-based statements after."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from contracts.commands import Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.events import CouponCreated, CouponError, CouponFound, CouponRedeemed, Event
from contracts.identity import coupon_id
from worker.domain.errors import BusinessError
from worker.domain.working_set import WorkingSet


def create_coupon(command: CreateCoupon, coupons: WorkingSet, message_id: str) -> Event:
    coupon = coupons.create(coupon_id(message_id), command.code, command.init_count)
    return CouponCreated(
        id=coupon.id,
        code=coupon.code,
        init_count=coupon.init_count,
        remaining_count=coupon.remaining_count,
    )


def redeem_coupon(command: RedeemCoupon, coupons: WorkingSet, message_id: str) -> Event:
    coupon = coupons.redeem(command.code)
    return CouponRedeemed(id=coupon.id, code=coupon.code, remaining_count=coupon.remaining_count)


def get_coupon(command: GetCoupon, coupons: WorkingSet, message_id: str) -> Event:
    coupon = coupons.get(command.code)
    return CouponFound(
        id=coupon.id,
        code=coupon.code,
        init_count=coupon.init_count,
        remaining_count=coupon.remaining_count,
    )


# (command, the batch's working set, the command's message_id) -> its outcome event
Handler = Callable[[Any, WorkingSet, str], Event]

HANDLERS: Final[Mapping[type[Command], Handler]] = {
    CreateCoupon: create_coupon,
    RedeemCoupon: redeem_coupon,
    GetCoupon: get_coupon,
}


# The type of `handle`, and of what the composition root may wrap it in (fault injection).
HandleCommand = Callable[[Command, WorkingSet, str], Event]


def handle(command: Command, coupons: WorkingSet, message_id: str) -> Event:
    """Run the command's handler; a business failure becomes its `coupon.error` event."""
    handler = HANDLERS[type(command)]
    try:
        return handler(command, coupons, message_id)
    except BusinessError as error:
        return CouponError(
            error=error.kind, detail=error.detail, command=command.routing_key, code=command.code
        )
