"""Record what is routed to an exchange, and publish a recording again (the `client` extra).

Recording taps, it never drains: `record` binds a temporary queue of its own (exclusive,
auto-delete) to the exchange with the chosen patterns, so it receives a *copy* of every message
routed there from the moment it is bound, while the queues of the real consumers get theirs as
before. Draining a consumer's queue instead (get, write, requeue) would hide its messages from
its consumers while they are held, reorder them, and — on a quorum queue such as `coupon.worker`
— count every requeue against the queue's `x-delivery-limit`, so a recording could push commands
into the dead-letter queue. A tap costs nothing of the kind; what it cannot see is what was
routed before it was bound (start it first, or replay the producer). Each message is written
(and flushed) before it is acknowledged to the tap queue; a recorder that dies loses only its own
copy, never a consumer's message.

Replaying publishes each message to its recorded exchange (or another one), with its routing
key, body, headers and properties, so the same `message_id`s make the replay idempotent:
commands the worker has already applied are answered from their stored outcome, not applied
again. `new_ids=True` gives each distinct `message_id` a fresh one (repeats in the recording keep
repeating the same new id), which applies everything again. `user_id` is not copied (the broker
refuses a `user_id` other than the publishing connection's).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from contracts import amqp
from contracts.deprecation import renamed
from contracts.recording import RecordedMessage

__all__ = ["Replayer", "record"]


async def record(
    connection: AbstractConnection,
    exchange: str,
    patterns: Sequence[str],
    write: Callable[[RecordedMessage], None],
    *,
    limit: int = 0,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Tap `exchange` with `patterns` and hand every message to `write` until `limit` messages
    (0: no limit) or `stop` is set. `on_ready` is called once the tap is bound. Returns the
    count."""
    stop = stop or asyncio.Event()
    channel = await connection.channel()
    try:
        await channel.set_qos(prefetch_count=256)
        tap = await channel.declare_queue(exclusive=True, auto_delete=True)
        for pattern in patterns:
            await tap.bind(exchange, routing_key=pattern)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await tap.consume(inbox.put)
        if on_ready is not None:
            on_ready()
        count = 0
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not limit or count < limit:
                taking = asyncio.ensure_future(inbox.get())
                await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not taking.done():
                    taking.cancel()
                    break
                message = taking.result()
                write(amqp.to_recorded(message))
                await message.ack()
                count += 1
        finally:
            stopping.cancel()
        return count
    finally:
        await channel.close()


class Replayer:
    """Publishes recorded messages with publisher confirms, in order, optionally paced."""

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        exchange: str | None = None,
        new_ids: bool = False,
        rate: float | None = None,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (messages per second)")
        self._channel = channel
        self._exchange = exchange
        self._new_ids = new_ids
        self._interval = 1 / rate if rate else 0.0
        self._renamed: dict[str, str] = {}
        self._next_at = 0.0

    def prepare(self, recorded: RecordedMessage) -> RecordedMessage:
        """The message as it will be published (a fresh id, with `new_ids`)."""
        message_id = recorded.properties.message_id
        if not self._new_ids or message_id is None:
            return recorded
        renamed = self._renamed.setdefault(message_id, str(uuid.uuid4()))
        return recorded.with_properties(message_id=renamed)

    async def publish(self, recorded: RecordedMessage) -> RecordedMessage:
        """Publish one message (confirmed, mandatory); raises if the broker does not take it."""
        await self._pace()
        prepared = self.prepare(recorded)
        exchange = await self._channel.get_exchange(
            self._exchange or prepared.exchange, ensure=False
        )
        await exchange.publish(amqp.to_message(prepared), prepared.routing_key, mandatory=True)
        return prepared

    async def _pace(self) -> None:
        if not self._interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next_at > now:
            await asyncio.sleep(self._next_at - now)
        self._next_at = max(now, self._next_at) + self._interval


__getattr__ = renamed(
    __name__,
    {
        "to_recorded": ("contracts.amqp.to_recorded", lambda: amqp.to_recorded),
        "to_message": ("contracts.amqp.to_message", lambda: amqp.to_message),
    },
)
