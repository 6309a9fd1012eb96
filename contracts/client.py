"""A typed aio-pika client for services that talk to the coupon worker (the `client` extra).

    async with await CouponClient.connect("amqp://guest:guest@localhost/") as client:
        created = await client.create("SPRING", 100)           # CouponCreated, or raises
        message_id = await client.redeem("SPRING", wait=False)  # publish only
        async for received in client.subscribe(["coupon.redeemed"], queue="billing"):
            ...

Requests wait on RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`): one consumer per client,
on the channel that publishes, and one future per request keyed by its `correlation_id`, so no
queue is declared per call and any number of requests can be in flight on one client. Direct
reply-to has no acks and no buffer: a reply that arrives while the connection is down is lost,
and its request ends in `RequestTimeout`; re-sending with the same `message_id` is then safe.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from contracts import names
from contracts.commands import Command
from contracts.errors import (
    AlreadyExists,
    CommandFailed,
    CommandRejected,
    CouponClientError,
    DoesNotExist,
    Exhausted,
    OutcomeError,
    RequestTimeout,
)
from contracts.messages import CommandMessage
from contracts.names import Topology
from contracts.received import ReceivedEvent, UnknownEvent
from contracts.requests import CouponCommands
from contracts.subscription import Subscription, read_outcome, to_amqp
from contracts.validation import InvalidCommand

__all__ = [
    "AlreadyExists",
    "CommandFailed",
    "CommandRejected",
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
    "read_outcome",
    "to_amqp",
]

DEFAULT_TIMEOUT = 30.0


class CouponClient(CouponCommands):
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
    ) -> CouponClient:
        """`connect_kwargs` go to aio-pika's `connect_robust` (`ssl_context=`, `timeout=`...);
        `request_timeout` is how long a request waits by default, in seconds."""
        connection = await aio_pika.connect_robust(url, **connect_kwargs)
        return await cls.over(connection, prefix, request_timeout=request_timeout)

    @classmethod
    async def over(
        cls,
        connection: AbstractConnection,
        prefix: str = "",
        *,
        request_timeout: float = DEFAULT_TIMEOUT,
    ) -> CouponClient:
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
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        await self.connection.close()

    # --- publishing ----------------------------------------------------------------------

    async def publish(self, message: CommandMessage) -> None:
        exchange = await self.channel.get_exchange(self.topology.commands_exchange, ensure=False)
        await exchange.publish(to_amqp(message), message.routing_key, mandatory=True)

    # --- requests ------------------------------------------------------------------------

    async def request(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> ReceivedEvent:
        """Send a command and wait for its outcome, whatever it is (an error event included).
        Raises `RequestTimeout` when none arrives `within` seconds (default: the client's)."""
        await self._start_replies()
        message_id = message_id or str(uuid.uuid4())
        correlation_id = correlation_id or str(uuid.uuid4())
        if correlation_id in self._pending:
            raise ValueError(f"a request with correlation_id {correlation_id!r} is in flight")
        future: asyncio.Future[ReceivedEvent] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        within = self.request_timeout if within is None else within
        try:
            await self.send(
                command,
                message_id=message_id,
                correlation_id=correlation_id,
                reply_to=names.DIRECT_REPLY_TO,
            )
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
        future.set_result(read_outcome(message, message.type or message.routing_key))

    # --- events --------------------------------------------------------------------------

    def subscribe(
        self,
        routing_keys: Sequence[str] = ("coupon.*",),
        *,
        queue: str | None = None,
        dedupe: int = 0,
        prefetch: int = 32,
    ) -> Subscription:
        """Events on `coupon.events` matching `routing_keys`, each acknowledged only once the
        loop body that received it finished without error. `queue` names a durable queue of
        the caller's (events wait there while nobody consumes; name it per service); without
        it, a temporary queue lives as long as the subscription. `dedupe` remembers that many
        event message_ids and skips repeats (a republished outcome carries the same id)."""
        return Subscription(
            self.connection,
            self.topology.events_exchange,
            routing_keys,
            queue=queue,
            dedupe=dedupe,
            prefetch=prefetch,
        )

    async def events(self, pattern: str = "coupon.*") -> AsyncIterator[ReceivedEvent]:
        """Follow `coupon.events` from now on, on a temporary queue (`subscribe` does more)."""
        async with self.subscribe([pattern]) as subscription:
            async for received in subscription:
                yield received
