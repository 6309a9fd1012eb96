"""Events: what the worker publishes. Readers ignore fields they do not know."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Final
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from contracts import names


class Event(BaseModel):
    """Base of every outcome; `routing_key` names it on the wire."""

    # Events may grow new optional fields: a reader built on an older contract must accept them.
    model_config = ConfigDict(frozen=True, extra="ignore")

    routing_key: ClassVar[str]


class CouponCreated(Event):
    routing_key: ClassVar[str] = names.CREATED

    id: UUID
    code: str
    init_count: int
    remaining_count: int


class CouponFound(CouponCreated):
    """Reply to `coupon.get`: the `coupon.created` body shape."""

    routing_key: ClassVar[str] = names.FOUND


class CouponRedeemed(Event):
    routing_key: ClassVar[str] = names.REDEEMED

    id: UUID
    code: str
    remaining_count: int


class ErrorKind(StrEnum):
    """The business outcomes that are not a success; each says how it is worded."""

    DOES_NOT_EXIST = "DoesNotExist"
    ALREADY_EXISTS = "AlreadyExists"
    EXHAUSTED = "Exhausted"

    def detail_for(self, code: str) -> str:
        """The `detail` of a `coupon.error` of this kind: one wording for the worker, the
        in-memory fake and the tests."""
        return f"coupon {code!r} {_WORDING[self]}"


_WORDING: Final[dict[ErrorKind, str]] = {
    ErrorKind.DOES_NOT_EXIST: "does not exist",
    ErrorKind.ALREADY_EXISTS: "already exists",
    ErrorKind.EXHAUSTED: "has no redemptions left",
}


class CouponError(Event):
    """A business outcome that is not a success; the command was handled and acknowledged."""

    routing_key: ClassVar[str] = names.ERROR

    error: ErrorKind
    detail: str
    command: str
    code: str


class InvalidCommandReply(BaseModel):
    """Sent to `reply_to` for a command that could not be processed as sent."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    error: str = "InvalidCommand"
    detail: str


EVENTS: Final[dict[str, type[Event]]] = {
    cls.routing_key: cls for cls in (CouponCreated, CouponFound, CouponRedeemed, CouponError)
}
