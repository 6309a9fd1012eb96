"""Subscriptions to `coupon.events` that acknowledge an event only after it was handled
(the `client` extra, aio-pika).

    async with client.subscribe(["coupon.redeemed"], queue="billing.coupons") as events:
        async for received in events:
            await bill(received.event)   # raises -> not acknowledged: delivered again

Each event is acknowledged when the loop asks for the next one, that is after the loop body
that received it finished. If the body raises, the subscription's channel is closed and the
broker puts every unacknowledged event back in the queue: a named queue delivers it again (with
`redelivered` set) to the next subscription on it; a temporary queue is deleted with the
subscription, so its events are gone. Leaving the loop with `break` acknowledges the last event
only inside `async with client.subscribe(...) as events:` (which knows that no exception ended
the loop); a bare `async for` cannot tell a `break` from an error, and returns it.

A named queue is a durable quorum queue with a delivery limit (`delivery_limit`, 5 by
default; RabbitMQ's `x-delivery-limit`, which counts returns): an event delivered once and
redelivered that many times without being acknowledged — a handler that keeps failing on it, or
keeps crashing the process — is not delivered again but parked in
the subscriber's own dead-letter queue, `<queue>.dead` (or `dead_letter_queue`), where RabbitMQ's
`x-death` header (and `x-first-death-reason`: `delivery_limit`) says why. The events behind it
keep flowing. Queue arguments cannot change on an existing queue: a queue declared by an older
client (classic, no limit) must be deleted, or given the limit by a broker policy.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Final, Self

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from contracts import amqp
from contracts.deprecation import renamed
from contracts.protocol import DEFAULT_DELIVERY_LIMIT, check_subscription
from contracts.received import ReceivedEvent

__all__ = ["DEAD_LETTER_SUFFIX", "AmqpSubscription", "subscriber_queue_arguments"]

DEAD_LETTER_SUFFIX: Final = ".dead"


def subscriber_queue_arguments(delivery_limit: int, dead_letter_queue: str) -> dict[str, Any]:
    """The arguments of a subscriber's named queue: quorum, limited deliveries, dead letters
    to `dead_letter_queue` through the default exchange."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue,
    }


class AmqpSubscription:
    """`contracts.protocol.Subscription` over aio-pika (see the module's docstring)."""

    def __init__(
        self,
        connection: AbstractConnection,
        exchange: str,
        routing_keys: Sequence[str],
        *,
        queue: str | None = None,
        dedupe: int = 0,
        prefetch: int = 32,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        dead_letter_queue: str | None = None,
    ) -> None:
        check_subscription(routing_keys, dedupe, prefetch, delivery_limit)
        if dead_letter_queue is not None and not queue:
            raise ValueError("dead_letter_queue needs a named queue")
        self._connection = connection
        self._exchange = exchange
        self._routing_keys = list(routing_keys)
        self._queue_name = queue
        self._dedupe = dedupe
        self._prefetch = prefetch
        self._delivery_limit = delivery_limit
        self.dead_letter_queue = (
            (dead_letter_queue or queue + DEAD_LETTER_SUFFIX) if queue else None
        )
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._unsettled: AbstractIncomingMessage | None = None
        self.queue: AbstractQueue | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._unsettled is not None:
            await self._settle(self._unsettled)  # the loop was left by `break`: it was handled
        await self.close()

    async def open(self) -> None:
        """Declare and bind the queue and start consuming (iterating does it when needed)."""
        if self._channel is not None:
            return
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        if self._queue_name and self.dead_letter_queue:
            await self._channel.declare_queue(
                self.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            arguments = subscriber_queue_arguments(self._delivery_limit, self.dead_letter_queue)
            queue = await self._channel.declare_queue(
                self._queue_name, durable=True, arguments=arguments
            )
        else:
            queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        for routing_key in self._routing_keys:
            await queue.bind(self._exchange, routing_key=routing_key)
        await queue.consume(self._inbox.put)
        self.queue = queue

    async def close(self) -> None:
        """Stop consuming; every event not acknowledged yet goes back to the queue."""
        channel, self._channel = self._channel, None
        self._unsettled = None
        if channel is not None and not channel.is_closed:
            await channel.close()

    def __aiter__(self) -> AsyncIterator[ReceivedEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ReceivedEvent]:
        owner = self._channel is None  # a bare `async for` opens and closes the subscription
        await self.open()
        try:
            while True:
                message = await self._inbox.get()
                received = amqp.received(message, message.routing_key)
                if received.message_id is not None and received.message_id in self._seen:
                    await self._settle(message)
                    continue
                self._unsettled = message
                yield received
                # Reached only when the loop asks for the next event: the body succeeded.
                await self._settle(message)
        finally:
            if owner:
                await self.close()

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        self._unsettled = None
        try:
            await message.ack()
        except Exception:  # delivered on a channel that is gone: the broker delivers it again
            return
        if self._dedupe and message.message_id:
            self._seen[message.message_id] = None
            while len(self._seen) > self._dedupe:
                self._seen.popitem(last=False)


__getattr__ = renamed(
    __name__,
    {
        "Subscription": ("contracts.client.AmqpSubscription", lambda: AmqpSubscription),
        "read_outcome": ("contracts.amqp.received", lambda: amqp.received),
        "to_amqp": ("contracts.amqp.to_amqp", lambda: amqp.to_amqp),
    },
)
