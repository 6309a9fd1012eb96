"""The in-memory backend: a fake broker around `FakeWorker`, and a client with the real
client's verbs (`create`, `redeem`, `get`, `send`, `request`, `subscribe`).

The broker routes `coupon.commands` to the worker (binding `coupon.*`; any other key is
unroutable, which a publish reports as the real client's confirmed mandatory publish does),
`coupon.events` to the queues bound to it by topic pattern, `coupon.dead` to the dead-letter
list, and the default exchange to reply handlers. Subscriptions acknowledge as the real ones do:
an event whose loop body raised goes back to the front of its queue, marked redelivered.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from contracts.commands import Command
from contracts.messages import CommandMessage
from contracts.names import Topology
from contracts.received import ReceivedEvent, read_received
from contracts.recording import RecordedMessage
from contracts.requests import CouponCommands
from contracts.testing.fake import FakeWorker, topic_matches


class Unroutable(Exception):
    """A mandatory publish that no queue took (the real client gets aio-pika's DeliveryError)."""


@dataclass
class FakeQueue:
    name: str
    patterns: list[str]
    durable: bool
    messages: deque[tuple[RecordedMessage, bool]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, message: RecordedMessage, redelivered: bool = False, front: bool = False) -> None:
        (self.messages.appendleft if front else self.messages.append)((message, redelivered))
        self.arrived.set()

    async def take(self) -> tuple[RecordedMessage, bool]:
        while not self.messages:
            self.arrived.clear()
            await self.arrived.wait()
        return self.messages.popleft()


class FakeBroker:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.worker = FakeWorker(topology, self._route)
        self.queues: dict[str, FakeQueue] = {}
        self.dead_letters: list[RecordedMessage] = []
        self._reply_handlers: dict[str, Callable[[RecordedMessage], None]] = {}

    def publish(self, message: RecordedMessage) -> None:
        """A command, to `coupon.commands` whatever exchange it was recorded from."""
        if not topic_matches(self.topology.command_binding_key, message.routing_key):
            raise Unroutable(f"no queue is bound to {message.routing_key!r}")
        self.worker.handle(message)

    def _route(self, exchange: str, routing_key: str, message: RecordedMessage) -> None:
        if exchange == "":
            handler = self._reply_handlers.get(routing_key)
            if handler is not None:
                handler(message)
        elif exchange == self.topology.dead_exchange:
            self.dead_letters.append(message)
        else:
            for queue in list(self.queues.values()):
                if any(topic_matches(pattern, routing_key) for pattern in queue.patterns):
                    queue.put(message)

    def on_reply(self, name: str, handler: Callable[[RecordedMessage], None]) -> None:
        self._reply_handlers[name] = handler

    def forget_reply(self, name: str) -> None:
        self._reply_handlers.pop(name, None)

    def queue(self, name: str | None, patterns: Sequence[str]) -> FakeQueue:
        if name is None:
            queue = FakeQueue(f"amq.gen-{uuid.uuid4().hex}", list(patterns), durable=False)
        else:
            queue = self.queues.get(name) or FakeQueue(name, [], durable=True)
            queue.patterns.extend(p for p in patterns if p not in queue.patterns)
        self.queues[queue.name] = queue
        return queue

    def delete(self, queue: FakeQueue) -> None:
        if not queue.durable:
            self.queues.pop(queue.name, None)


def received_of(message: RecordedMessage, redelivered: bool = False) -> ReceivedEvent:
    p = message.properties
    return read_received(
        p.type or message.routing_key,
        message.body_bytes(),
        message_id=p.message_id,
        correlation_id=p.correlation_id,
        headers=message.header_values(),
        redelivered=redelivered,
    )


class FakeSubscription:
    def __init__(
        self, broker: FakeBroker, routing_keys: Sequence[str], queue: str | None, dedupe: int
    ) -> None:
        if isinstance(routing_keys, str) or not routing_keys:
            raise ValueError("routing_keys: a non-empty list of binding patterns")
        self._broker, self._routing_keys, self._name = broker, list(routing_keys), queue
        self._dedupe = dedupe
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._queue: FakeQueue | None = None
        self._unsettled: RecordedMessage | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: object, tb: TracebackType | None
    ) -> None:
        if exc_type is None and self._unsettled is not None:
            self._settle(self._unsettled)
        await self.close()

    async def open(self) -> None:
        if self._queue is None:
            self._queue = self._broker.queue(self._name, self._routing_keys)

    async def close(self) -> None:
        queue, self._queue = self._queue, None
        if queue is None:
            return
        if self._unsettled is not None:  # not acknowledged: back to the queue
            queue.put(self._unsettled, redelivered=True, front=True)
            self._unsettled = None
        self._broker.delete(queue)

    def __aiter__(self) -> AsyncIterator[ReceivedEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ReceivedEvent]:
        owner = self._queue is None
        await self.open()
        try:
            while self._queue is not None:
                message, redelivered = await self._queue.take()
                if message.properties.message_id in self._seen:
                    continue
                self._unsettled = message
                yield received_of(message, redelivered)
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


class FakeCouponClient(CouponCommands):
    """The in-memory twin of `contracts.client.CouponClient`."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.topology = broker.topology

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        return None

    async def publish(self, message: CommandMessage) -> None:
        self.broker.publish(RecordedMessage.of_command(message, self.topology.commands_exchange))

    async def request(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> ReceivedEvent:
        reply_to = f"amq.rabbitmq.reply-to.fake-{uuid.uuid4().hex}"
        replies: list[RecordedMessage] = []
        self.broker.on_reply(reply_to, replies.append)
        try:
            await self.send(
                command,
                message_id=message_id,
                correlation_id=correlation_id or str(uuid.uuid4()),
                reply_to=reply_to,
            )
        finally:
            self.broker.forget_reply(reply_to)
        [reply] = replies  # the fake worker answers at once, exactly once
        return received_of(reply)

    def subscribe(
        self,
        routing_keys: Sequence[str] = ("coupon.*",),
        *,
        queue: str | None = None,
        dedupe: int = 0,
        prefetch: int = 32,
    ) -> FakeSubscription:
        return FakeSubscription(self.broker, routing_keys, queue, dedupe)
