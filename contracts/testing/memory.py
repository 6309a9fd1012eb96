"""The in-memory backend: a fake broker around `FakeWorker`, and `FakeCouponClient`, the
in-memory implementation of the `CouponClient` Protocol (pydantic only).

The broker routes `coupon.commands` to the worker (binding `coupon.*`; any other key is
unroutable, and the publish raises `CommandUnroutable`, as the real client's confirmed
mandatory publish does), `coupon.events` to the queues bound to it by topic pattern,
`coupon.dead` to the dead-letter list, and the default exchange to reply handlers. The worker
takes commands from its queue in a task of its own, after their publish returned.
Subscriptions acknowledge as the real ones do: an event whose loop body raised goes back to the
front of its queue, marked redelivered; a named queue parks an event returned more than
`delivery_limit` times in `<queue>.dead`, with `x-death` and `x-first-death-reason` headers as
RabbitMQ's quorum queues write them.

Over 250 lines for a reason: the fake broker and the fake client are one model of what a client
sees of RabbitMQ (routing, queues, confirms, delivery limits, dead letters); split, each half
would reach into the other's queues.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from contracts import names
from contracts.commands import Command
from contracts.deprecation import renamed
from contracts.errors import CommandUnroutable, RequestTimeout
from contracts.messages import CommandMessage, command_message
from contracts.names import Topology
from contracts.protocol import DEFAULT_DELIVERY_LIMIT, check_subscription
from contracts.received import ReceivedEvent
from contracts.recording import RecordedMessage, encode_header
from contracts.requests import CouponVerbs
from contracts.testing.fake import FakeWorker, topic_matches

__all__ = ["FakeBroker", "FakeCouponClient", "FakeQueue", "FakeSubscription"]

DEFAULT_TIMEOUT = 30.0


@dataclass
class FakeQueue:
    """A queue of the fake broker: its messages, each with how often it was delivered."""

    name: str
    patterns: list[str]
    durable: bool
    delivery_limit: int | None = None
    dead_letter_queue: str | None = None
    messages: deque[tuple[RecordedMessage, int]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, message: RecordedMessage, deliveries: int = 0, front: bool = False) -> None:
        """Enqueue `message` (`deliveries`: how often it was delivered before)."""
        (self.messages.appendleft if front else self.messages.append)((message, deliveries))
        self.arrived.set()

    async def take(self) -> tuple[RecordedMessage, int]:
        """The next message and how often it was delivered before, once there is one."""
        while not self.messages:
            self.arrived.clear()
            await self.arrived.wait()
        return self.messages.popleft()


class FakeBroker:
    """The little of RabbitMQ the fake worker and its clients need."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.worker = FakeWorker(topology, self._route)
        self.queues: dict[str, FakeQueue] = {}
        self.dead_letters: list[RecordedMessage] = []
        self._reply_handlers: dict[str, Callable[[RecordedMessage], None]] = {}
        self._commands: deque[RecordedMessage] = deque()
        self._pending = asyncio.Event()
        self._worker_task: asyncio.Task[None] | None = None

    def publish(self, message: RecordedMessage) -> None:
        """A command, to `coupon.commands` whatever exchange it was recorded from; applied
        by the worker's task after this returns."""
        if not topic_matches(self.topology.command_binding_key, message.routing_key):
            raise CommandUnroutable(message.routing_key, message.properties.message_id)
        self._commands.append(message)
        self._pending.set()
        if self._worker_task is None:
            self._worker_task = asyncio.get_running_loop().create_task(
                self._work(), name="fake coupon worker"
            )

    async def _work(self) -> None:
        while True:
            while not self._commands:
                self._pending.clear()
                await self._pending.wait()
            self.worker.handle(self._commands.popleft())
            await asyncio.sleep(0)  # one command at a time, others run in between

    async def aclose(self) -> None:
        """Stop the worker's task."""
        if self._worker_task is not None:
            self._worker_task.cancel()
            await asyncio.gather(self._worker_task, return_exceptions=True)

    def _route(self, exchange: str, routing_key: str, message: RecordedMessage) -> None:
        if exchange == "":
            handler = self._reply_handlers.get(routing_key)
            if handler is not None:
                handler(message)
            elif routing_key in self.queues:
                self.queues[routing_key].put(message)
        elif exchange == self.topology.dead_exchange:
            self.dead_letters.append(message)
        else:
            for queue in list(self.queues.values()):
                if any(topic_matches(pattern, routing_key) for pattern in queue.patterns):
                    queue.put(message)

    def on_reply(self, name: str, handler: Callable[[RecordedMessage], None]) -> None:
        """Hand what is sent to the reply queue `name` to `handler`."""
        self._reply_handlers[name] = handler

    def forget_reply(self, name: str) -> None:
        """Stop handing replies to `name` to anyone (they are dropped, as direct replies are)."""
        self._reply_handlers.pop(name, None)

    def queue(
        self,
        name: str | None,
        patterns: Sequence[str],
        delivery_limit: int | None = None,
        dead_letter_queue: str | None = None,
    ) -> FakeQueue:
        """Declare (or find) and bind a queue; without `name`, a temporary one."""
        if name is None:
            queue = FakeQueue(f"amq.gen-{uuid.uuid4().hex}", list(patterns), durable=False)
        else:
            if dead_letter_queue is not None and dead_letter_queue not in self.queues:
                self.queues[dead_letter_queue] = FakeQueue(dead_letter_queue, [], durable=True)
            queue = self.queues.get(name) or FakeQueue(
                name, [], True, delivery_limit, dead_letter_queue
            )
            queue.patterns.extend(p for p in patterns if p not in queue.patterns)
        self.queues[queue.name] = queue
        return queue

    def delete(self, queue: FakeQueue) -> None:
        """Delete a temporary queue (a durable one stays)."""
        if not queue.durable:
            self.queues.pop(queue.name, None)

    def returned(self, queue: FakeQueue, message: RecordedMessage, deliveries: int) -> None:
        """An unacknowledged message back to the front of its queue, or, once it was delivered
        `delivery_limit` times, to the queue's dead-letter queue."""
        limit = queue.delivery_limit
        # RabbitMQ's x-delivery-limit counts returns: parked when returned more than that.
        if limit is None or deliveries <= limit or queue.dead_letter_queue is None:
            queue.put(message, deliveries, front=True)
            return
        headers = dict(message.headers)
        death = {
            "reason": "delivery_limit",
            "queue": queue.name,
            "count": 1,
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
            "time": datetime.now(UTC).replace(microsecond=0),
        }
        headers["x-death"] = [encode_header(death)]
        headers["x-first-death-reason"] = "delivery_limit"
        headers["x-first-death-queue"] = queue.name
        headers["x-first-death-exchange"] = message.exchange
        parked = message.model_copy(update={"headers": headers})
        self.queues[queue.dead_letter_queue].put(parked)


class FakeSubscription:
    """The in-memory `contracts.protocol.Subscription`."""

    def __init__(
        self,
        broker: FakeBroker,
        routing_keys: Sequence[str],
        queue: str | None,
        dedupe: int,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        dead_letter_queue: str | None = None,
    ) -> None:
        if dead_letter_queue is not None and not queue:
            raise ValueError("dead_letter_queue needs a named queue")
        self._broker, self._routing_keys, self._name = broker, list(routing_keys), queue
        self._dedupe = dedupe
        self._delivery_limit = delivery_limit
        self.dead_letter_queue = (dead_letter_queue or f"{queue}.dead") if queue else None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._queue: FakeQueue | None = None
        self._unsettled: tuple[RecordedMessage, int] | None = None

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
            self._settle(self._unsettled[0])
        await self.close()

    async def open(self) -> None:
        """Declare and bind the queue (entering or iterating does it)."""
        if self._queue is None:
            self._queue = self._broker.queue(
                self._name, self._routing_keys, self._delivery_limit, self.dead_letter_queue
            )

    async def close(self) -> None:
        """Stop consuming; the event not acknowledged yet goes back to the queue."""
        queue, self._queue = self._queue, None
        if queue is None:
            return
        if self._unsettled is not None:
            self._broker.returned(queue, *self._unsettled)
            self._unsettled = None
        self._broker.delete(queue)

    def __aiter__(self) -> AsyncIterator[ReceivedEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ReceivedEvent]:
        owner = self._queue is None
        await self.open()
        try:
            while self._queue is not None:
                message, deliveries = await self._queue.take()
                if message.properties.message_id in self._seen:
                    continue
                self._unsettled = (message, deliveries + 1)
                if deliveries:  # a quorum queue says how often it delivered the message before
                    headers = {**message.headers, "x-delivery-count": deliveries}
                    message = message.model_copy(update={"headers": headers})
                yield message.received(redelivered=deliveries > 0)
                self._settle(message)
        finally:
            if owner:
                await self.close()

    def _settle(self, message: RecordedMessage) -> None:
        self._unsettled = None
        message_id = message.properties.message_id
        if self._dedupe and message_id:
            self._seen[message_id] = None
            while len(self._seen) > self._dedupe:
                self._seen.popitem(last=False)


class FakeCouponClient(CouponVerbs):
    """The in-memory implementation of `contracts.protocol.CouponClient`."""

    def __init__(self, broker: FakeBroker, *, request_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.broker = broker
        self.topology = broker.topology
        self.request_timeout = request_timeout

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
        """Nothing to close: the backend owns the broker."""
        return None

    async def _publish(self, message: CommandMessage) -> None:
        self.broker.publish(RecordedMessage.of_command(message, self.topology.commands_exchange))

    async def _request(
        self,
        command: Command,
        *,
        message_id: str,
        correlation_id: str | None,
        within: float | None,
    ) -> ReceivedEvent:
        reply_to = f"{names.DIRECT_REPLY_TO}.fake-{uuid.uuid4().hex}"
        answer: asyncio.Future[RecordedMessage] = asyncio.get_running_loop().create_future()

        def reply(message: RecordedMessage) -> None:
            if not answer.done():
                answer.set_result(message)

        within = self.request_timeout if within is None else within
        self.broker.on_reply(reply_to, reply)
        try:
            message = command_message(
                command,
                message_id=message_id,
                correlation_id=correlation_id or str(uuid.uuid4()),
                reply_to=reply_to,
            )
            await self._publish(message)
            async with asyncio.timeout(within):
                return (await answer).received()
        except TimeoutError:
            raise RequestTimeout(message_id, within) from None
        finally:
            self.broker.forget_reply(reply_to)

    def subscribe(
        self,
        routing_keys: Sequence[str] = ("coupon.*",),
        *,
        queue: str | None = None,
        dedupe: int = 0,
        prefetch: int = 32,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        dead_letter_queue: str | None = None,
    ) -> FakeSubscription:
        """As `CouponClient.subscribe` (`prefetch` is checked, and otherwise moot here)."""
        check_subscription(routing_keys, dedupe, prefetch, delivery_limit)
        return FakeSubscription(
            self.broker, routing_keys, queue, dedupe, delivery_limit, dead_letter_queue
        )


def _received_of(message: RecordedMessage, redelivered: bool = False) -> ReceivedEvent:
    return message.received(redelivered)


__getattr__ = renamed(
    __name__,
    {
        "received_of": ("RecordedMessage.received", lambda: _received_of),
        "Unroutable": ("contracts.CommandUnroutable", lambda: CommandUnroutable),
    },
)
