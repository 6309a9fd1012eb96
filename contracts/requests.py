"""The typed verbs of a coupon client, on top of `request` and `send` (pydantic only).

`contracts.client.CouponClient` (aio-pika) and the pytest plugin's in-memory client share them,
so code written against one runs against the other.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, overload

from contracts.commands import Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.events import CouponCreated, CouponFound, CouponRedeemed
from contracts.messages import CommandMessage, command_message
from contracts.received import EventT, ReceivedEvent, expect


class CouponCommands:
    async def publish(self, message: CommandMessage) -> None:
        raise NotImplementedError

    async def send(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> str:
        """Publish a command (confirmed; an unroutable one raises). Returns its message_id."""
        message = command_message(
            command, message_id=message_id, correlation_id=correlation_id, reply_to=reply_to
        )
        await self.publish(message)
        return message.message_id

    async def request(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> ReceivedEvent:
        raise NotImplementedError

    @overload
    async def create(
        self, code: str, init_count: int, *, wait: Literal[True] = ..., **options: Any
    ) -> CouponCreated: ...
    @overload
    async def create(
        self, code: str, init_count: int, *, wait: Literal[False], **options: Any
    ) -> str: ...
    async def create(
        self, code: str, init_count: int, *, wait: bool = True, **options: Any
    ) -> CouponCreated | str:
        """`coupon.create`. With `wait` (default) the `CouponCreated`, or `AlreadyExists`;
        without, the `message_id` once the broker confirmed the publish. `options`:
        `message_id`, `correlation_id`, and `within` (seconds) when waiting."""
        command = CreateCoupon(code=code, init_count=init_count)
        return await self._call(command, CouponCreated, wait, options)

    @overload
    async def redeem(
        self, code: str, *, wait: Literal[True] = ..., **options: Any
    ) -> CouponRedeemed: ...
    @overload
    async def redeem(self, code: str, *, wait: Literal[False], **options: Any) -> str: ...
    async def redeem(self, code: str, *, wait: bool = True, **options: Any) -> CouponRedeemed | str:
        """`coupon.redeem`: the `CouponRedeemed`, or `DoesNotExist` / `Exhausted`."""
        return await self._call(RedeemCoupon(code=code), CouponRedeemed, wait, options)

    async def get(self, code: str, **options: Any) -> CouponFound:
        """`coupon.get` (always waits, it is answered only on reply-to): the `CouponFound`,
        or `DoesNotExist`."""
        found = await self._call(GetCoupon(code=code), CouponFound, True, options)
        assert isinstance(found, CouponFound)
        return found

    async def _call(
        self, command: Command, success: type[EventT], wait: bool, options: dict[str, Any]
    ) -> EventT | str:
        unknown = set(options) - {"message_id", "correlation_id", "within"}
        if unknown:
            raise TypeError(f"unexpected options: {', '.join(sorted(unknown))}")
        message_id = options.get("message_id") or str(uuid.uuid4())
        if not wait:
            if "within" in options:
                raise TypeError("within applies only when waiting")
            return await self.send(
                command, message_id=message_id, correlation_id=options.get("correlation_id")
            )
        received = await self.request(
            command,
            message_id=message_id,
            correlation_id=options.get("correlation_id"),
            within=options.get("within"),
        )
        return expect(received, success, message_id)
