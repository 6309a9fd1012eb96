"""Commands: what clients ask the worker to do (frozen, unknown fields rejected)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts import names

MAX_INIT_COUNT: Final = 1_000_000_000

CouponCode = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$"),
    Field(description="1-64 letters, digits, '-' or '_'; case-sensitive"),
]
InitCount = Annotated[int, Field(strict=True, ge=1, le=MAX_INIT_COUNT)]


class Command(BaseModel):
    """Base of every command; `routing_key` names it on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    routing_key: ClassVar[str]
    needs_reply_to: ClassVar[bool] = False
    # A read changes nothing: it is answered fresh every time (never from a stored outcome),
    # only on `reply_to`, and never broadcast on `coupon.events`.
    is_read: ClassVar[bool] = False

    code: CouponCode


class CreateCoupon(Command):
    """`coupon.create`: make a coupon that can be redeemed `init_count` times."""

    routing_key: ClassVar[str] = names.CREATE

    init_count: InitCount


class RedeemCoupon(Command):
    """`coupon.redeem`: use up one of a coupon's remaining redemptions."""

    routing_key: ClassVar[str] = names.REDEEM


class GetCoupon(Command):
    """`coupon.get`: read a coupon; answered only on `reply_to`."""

    routing_key: ClassVar[str] = names.GET
    needs_reply_to: ClassVar[bool] = True
    is_read: ClassVar[bool] = True


COMMANDS: Final[dict[str, type[Command]]] = {
    cls.routing_key: cls for cls in (CreateCoupon, RedeemCoupon, GetCoupon)
}
