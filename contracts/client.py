"""The coupon worker's client over RabbitMQ (the `client` extra, aio-pika).

    from contracts.client import CouponClient, connect

    async with await connect("amqp://guest:guest@localhost/") as client:
        created = await client.create("SPRING", 100)            # CouponCreated, or raises
        message_id = await client.send(RedeemCoupon(code="SPRING"))  # fire and forget
        async with client.subscribe(["coupon.redeemed"], queue="billing") as events:
            async for received in events:
                ...

`CouponClient` is the Protocol (`contracts.protocol`) that this module's `AmqpCouponClient` and
the pytest plugin's in-memory client both implement: annotate with it.

Requests wait on RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`): one consumer per client,
on the channel that publishes, and one future per request keyed by its `correlation_id`, so no
queue is declared per call and any number of requests can be in flight on one client. Direct
reply-to has no acks and no buffer: a reply that arrives while the connection is down is lost,
and its request ends in `RequestTimeout`; re-sending with the same `message_id` is then safe.

Over 250 lines for a reason: one class, the Protocol's verbs over aio-pika; its conversions are
`contracts.amqp`'s and what its verbs share with the fake is `contracts.requests`'.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from contracts import amqp, names
from contracts.commands import Command
from contracts.deprecation import renamed, warn_deprecated
from contracts.errors import (
    AlreadyExists,
    CommandFailed,
    CommandRejected,
    CommandUnroutable,
    CouponClientError,
    DoesNotExist,
    Exhausted,
    OutcomeError,
    RequestTimeout,
)
from contracts.messages import CommandMessage, command_message
from contracts.names import Topology
from contracts.protocol import DEFAULT_DELIVERY_LIMIT, CouponClient, Subscription
from contracts.received import ReceivedEvent, UnknownEvent
from contracts.requests import CouponVerbs
from contracts.subscription import AmqpSubscription
from contracts.validation import InvalidCommand

__all__ = [
    "DEFAULT_TIMEOUT",
    "AlreadyExists",
    "AmqpCouponClient",
    "AmqpSubscription",
    "CommandFailed",
    "CommandRejected",
    "CommandUnroutable",
    "CouponClient",
    "CouponClientError",
    "DoesNotExist",
    "Exhausted",
    "InvalidCommand",
    "OutcomeError",
    "ReceivedEvent",
    "RequestTimeout",
    "Subscription",
    "UnknownEvent",
    "connect",
]

DEFAULT_TIMEOUT = 30.0
NO_ROUTE = 312  # the reply code of a mandatory message returned for want of a queue


async def connect(
    url: str,
    prefix: str = "",
    *,
    request_timeout: float = DEFAULT_TIMEOUT,
    **connect_kwargs: Any,
) -> AmqpCouponClient:
    """A client on a robust connection to `url`, under the name `prefix` (empty by default).
    `connect_kwargs` go to aio-pika's `connect_robust` (`ssl_context=`, `timeout=`...);
    `request_timeout` is how long `create` / `redeem` / `get` wait by default, in seconds."""
    return await AmqpCouponClient.connect(
        url, prefix, request_timeout=request_timeout, **connect_kwargs
    )


class AmqpCouponClient(CouponVerbs):
    """`CouponClient` over aio-pika: publishes confirmed and mandatory, waits on direct
    reply-to."""

    def __init__(
        self,
        connection: AbstractConnection,
        channel: AbstractChannel,
        topology: Topology,
        *,
        request_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.connection = connection
        self.channel = channel  # publishes (confirmed, mandatory) and receives direct replies
        self.topology = topology
        self.request_timeout = request_timeout
        self._pending: dict[str, asyncio.Future[ReceivedEvent]] = {}
        self._replies_started = False
        self._replies_lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        url: str,
        prefix: str = "",
        *,
        request_timeout: float = DEFAULT_TIMEOUT,
        **connect_kwargs: Any,
    ) -> AmqpCouponClient:
        """As the module's `connect`."""
        connection = await aio_pika.connect_robust(url, **connect_kwargs)
        return await cls.over(connection, prefix, request_timeout=request_timeout)

    @classmethod
    async def over(
        cls,
        connection: AbstractConnection,
        prefix: str = "",
        *,
        request_timeout: float = DEFAULT_TIMEOUT,
    ) -> AmqpCouponClient:
        """A client on a connection made elsewhere (e.g. one that fails over between the nodes
        of a cluster); it opens its own channel, and `close` closes the connection."""
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await connection.close()
            raise
        return cls(connection, channel, Topology(prefix), request_timeout=request_timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel the requests in flight and close the connection."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        await self.connection.close()

    async def _publish(self, message: CommandMessage) -> None:
        exchange = await self.channel.get_exchange(self.topology.commands_exchange, ensure=False)
        try:
            await exchange.publish(amqp.to_amqp(message), message.routing_key, mandatory=True)
        except aio_pika.exceptions.DeliveryError as error:
            if getattr(error.frame, "reply_code", None) != NO_ROUTE:
                raise  # refused (nacked) by the broker, not unroutable
            raise CommandUnroutable(message.routing_key, message.message_id) from error

    async def _request(
        self,
        command: Command,
        *,
        message_id: str,
        correlation_id: str | None,
        within: float | None,
    ) -> ReceivedEvent:
        await self._start_replies()
        correlation_id = correlation_id or str(uuid.uuid4())
        if correlation_id in self._pending:
            raise ValueError(f"a request with correlation_id {correlation_id!r} is in flight")
        future: asyncio.Future[ReceivedEvent] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        within = self.request_timeout if within is None else within
        try:
            message = command_message(
                command,
                message_id=message_id,
                correlation_id=correlation_id,
                reply_to=names.DIRECT_REPLY_TO,
            )
            await self._publish(message)
            async with asyncio.timeout(within):
                return await future
        except TimeoutError:
            raise RequestTimeout(message_id, within) from None
        finally:
            self._pending.pop(correlation_id, None)

    async def _start_replies(self) -> None:
        if self._replies_started:
            return
        async with self._replies_lock:
            if self._replies_started:
                return
            # A passive declare registers the pseudo-queue with the robust channel, which (by
            # aio-pika's RobustQueue.restore) declares and consumes it again after a reconnect;
            # no test here drops the client's connection yet.
            replies = await self.channel.declare_queue(names.DIRECT_REPLY_TO, passive=True)
            await replies.consume(self._on_reply, no_ack=True)
            self._replies_started = True

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            return  # the answer to a request that timed out, or to another client's
        future.set_result(amqp.received(message))

    def subscribe(
        self,
        routing_keys: Sequence[str] = ("coupon.*",),
        *,
        queue: str | None = None,
        dedupe: int = 0,
        prefetch: int = 32,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        dead_letter_queue: str | None = None,
    ) -> AmqpSubscription:
        """As `CouponClient.subscribe`."""
        return AmqpSubscription(
            self.connection,
            self.topology.events_exchange,
            routing_keys,
            queue=queue,
            dedupe=dedupe,
            prefetch=prefetch,
            delivery_limit=delivery_limit,
            dead_letter_queue=dead_letter_queue,
        )

    async def events(self, pattern: str = "coupon.*") -> AsyncIterator[ReceivedEvent]:
        """Deprecated: use `subscribe([pattern])`."""
        warn_deprecated("events(pattern)", "subscribe([pattern])")
        async with self.subscribe([pattern]) as subscription:
            async for received in subscription:
                yield received


async def _deprecated_connect(url: str, prefix: str = "", **options: Any) -> AmqpCouponClient:
    warn_deprecated("CouponClient.connect", "contracts.client.connect")
    return await AmqpCouponClient.connect(url, prefix, **options)


async def _deprecated_over(
    connection: AbstractConnection, prefix: str = "", **options: Any
) -> AmqpCouponClient:
    warn_deprecated("CouponClient.over", "AmqpCouponClient.over")
    return await AmqpCouponClient.over(connection, prefix, **options)


# `CouponClient` was this module's class before it became the Protocol; code that still calls
# `CouponClient.connect(...)` / `.over(...)` keeps working for one release, with a warning. Set
# on the class, not declared in it, so that they are not members of the Protocol (which the
# in-memory client implements too) and type checkers report them as gone.
CouponClient.connect = staticmethod(_deprecated_connect)  # type: ignore[attr-defined]
CouponClient.over = staticmethod(_deprecated_over)  # type: ignore[attr-defined]

__getattr__ = renamed(
    __name__,
    {
        "read_outcome": ("contracts.amqp.received", lambda: amqp.received),
        "to_amqp": ("contracts.amqp.to_amqp", lambda: amqp.to_amqp),
    },
)
