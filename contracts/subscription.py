"""Subscriptions to `coupon.events` that acknowledge an event only after it was handled
(the `client` extra, aio-pika).

    async for received in client.subscribe(["coupon.redeemed"], queue="billing.coupons"):
        await bill(received.event)    # raises → the event is not acknowledged: delivered again

Each event is acknowledged when the loop asks for the next one, that is after the loop body
that received it finished. If the body raises, the subscription's channel is closed and the
broker puts every unacknowledged event back in the queue: a durable named queue delivers it
again (with `redelivered` set) to the next subscription on it; a temporary queue is deleted with
the subscription, so its events are gone. Leaving the loop with `break` acknowledges the last
event only inside `async with client.subscribe(...) as events:` (which knows that no exception
ended the loop); a bare `async for` cannot tell a `break` from an error, and returns it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from contracts.messages import CommandMessage
from contracts.received import ReceivedEvent, read_received


def read_outcome(message: AbstractIncomingMessage, routing_key: str | None = None) -> ReceivedEvent:
    """An event or reply as received; never raises on unknown types or fields."""
    return read_received(
        routing_key or message.type or message.routing_key or "",
        message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        headers=message.headers,
        redelivered=bool(message.redelivered),
    )


@functools.cache
def _inject() -> Callable[[dict[str, Any]], None] | None:
    """OpenTelemetry's propagator when it is installed (the `tracing` extra), else None."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return None
    return propagate.inject


def to_amqp(message: CommandMessage) -> aio_pika.Message:
    """The AMQP message, stamped with the time it is sent (the `timestamp` property, whole
    seconds: the worker's command latency starts there); with OpenTelemetry installed, headers
    carry the current trace (W3C traceparent) on to the worker, its spans and its outcome."""
    headers = dict(message.headers)
    inject = _inject()
    if inject is not None:
        inject(headers)  # writes nothing without a current span
    return aio_pika.Message(
        message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        content_type=message.content_type,
        type=message.type,
        delivery_mode=aio_pika.DeliveryMode(message.delivery_mode),
        timestamp=datetime.now(UTC),
        headers=headers or None,
    )


class Subscription:
    """Iterate it (`async for`), ideally inside `async with` (see the module's docstring)."""

    def __init__(
        self,
        connection: AbstractConnection,
        exchange: str,
        routing_keys: Sequence[str],
        *,
        queue: str | None = None,
        dedupe: int = 0,
        prefetch: int = 32,
    ) -> None:
        if isinstance(routing_keys, str) or not routing_keys:
            raise ValueError("routing_keys: a non-empty list of binding patterns")
        if dedupe < 0 or prefetch < 1:
            raise ValueError("dedupe must be >= 0 and prefetch >= 1")
        self._connection = connection
        self._exchange = exchange
        self._routing_keys = list(routing_keys)
        self._queue_name = queue
        self._dedupe = dedupe
        self._prefetch = prefetch
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
        if self._queue_name:
            queue = await self._channel.declare_queue(self._queue_name, durable=True)
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
                received = read_outcome(message, message.routing_key)
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
