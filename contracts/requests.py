"""The typed verbs of a coupon client on top of two primitives (pydantic only).

`CouponVerbs` implements `create`, `redeem`, `get` and `send` of the `CouponClient` Protocol on
`_publish(message)` and `_request(command, ...)`, which the real client (`contracts.client`) and
the in-memory one (`contracts.testing.memory`) each provide, so the two cannot differ in how a
verb is built, only in how a message travels. The names of an earlier release (`request`,
`publish`, `wait=False`) still work for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import uuid
from typing import Literal, overload

from contracts.commands import Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.deprecation import warn_deprecated
from contracts.events import CouponCreated, CouponFound, CouponRedeemed
from contracts.messages import CommandMessage, command_message
from contracts.received import EventT, ReceivedEvent, expect

__all__ = ["CouponVerbs"]


class CouponVerbs:
    """The verbs shared by every client; subclasses provide `_publish` and `_request`."""

    async def _publish(self, message: CommandMessage) -> None:
        raise NotImplementedError

    async def _request(
        self,
        command: Command,
        *,
        message_id: str,
        correlation_id: str | None,
        within: float | None,
    ) -> ReceivedEvent:
        """Send `command` with a reply-to and wait for its outcome, whatever it is."""
        raise NotImplementedError

    async def send(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Publish a command (confirmed; an unroutable one raises). Returns its message_id."""
        message = command_message(command, message_id=message_id, correlation_id=correlation_id)
        await self._publish(message)
        return message.message_id

    @overload
    async def create(
        self,
        code: str,
        init_count: int,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> CouponCreated: ...
    @overload
    async def create(
        self,
        code: str,
        init_count: int,
        *,
        wait: Literal[False],
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str: ...
    async def create(
        self,
        code: str,
        init_count: int,
        *,
        wait: bool = True,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> CouponCreated | str:
        """`coupon.create`: the `CouponCreated`, or `AlreadyExists`. (`wait=False` is
        deprecated: use `send(CreateCoupon(...))`.)"""
        command = CreateCoupon(code=code, init_count=init_count)
        if not wait:
            return await self._deprecated_send(command, message_id, correlation_id, within)
        return await self._call(command, CouponCreated, message_id, correlation_id, within)

    @overload
    async def redeem(
        self,
        code: str,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> CouponRedeemed: ...
    @overload
    async def redeem(
        self,
        code: str,
        *,
        wait: Literal[False],
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str: ...
    async def redeem(
        self,
        code: str,
        *,
        wait: bool = True,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> CouponRedeemed | str:
        """`coupon.redeem`: the `CouponRedeemed`, or `DoesNotExist` / `Exhausted`.
        (`wait=False` is deprecated: use `send(RedeemCoupon(...))`.)"""
        command = RedeemCoupon(code=code)
        if not wait:
            return await self._deprecated_send(command, message_id, correlation_id, within)
        return await self._call(command, CouponRedeemed, message_id, correlation_id, within)

    async def get(
        self,
        code: str,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> CouponFound:
        """`coupon.get`, answered only to the asker: the `CouponFound`, or `DoesNotExist`."""
        command = GetCoupon(code=code)
        return await self._call(command, CouponFound, message_id, correlation_id, within)

    async def _call(
        self,
        command: Command,
        success: type[EventT],
        message_id: str | None,
        correlation_id: str | None,
        within: float | None,
    ) -> EventT:
        message_id = message_id or str(uuid.uuid4())
        received = await self._request(
            command, message_id=message_id, correlation_id=correlation_id, within=within
        )
        return expect(received, success, message_id)

    async def _deprecated_send(
        self,
        command: Command,
        message_id: str | None,
        correlation_id: str | None,
        within: float | None,
    ) -> str:
        verb = command.routing_key.removeprefix("coupon.")
        warn_deprecated(f"{verb}(..., wait=False)", "send(command)", stacklevel=4)
        if within is not None:
            raise TypeError("within applies only when waiting")
        return await self.send(command, message_id=message_id, correlation_id=correlation_id)

    async def request(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> ReceivedEvent:
        """Deprecated: use `create` / `redeem` / `get` (typed), or `send`."""
        warn_deprecated("request(command)", "create / redeem / get, or send")
        return await self._request(
            command,
            message_id=message_id or str(uuid.uuid4()),
            correlation_id=correlation_id,
            within=within,
        )

    async def publish(self, message: CommandMessage) -> None:
        """Deprecated: use `send(command)`."""
        warn_deprecated("publish(message)", "send(command)")
        await self._publish(message)
