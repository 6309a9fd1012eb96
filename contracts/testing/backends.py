"""The two backends behind the plugin's fixtures, with one surface:

- `client`: a `CouponClient` (`AmqpCouponClient`, or the in-memory `FakeCouponClient`);
- `publish(message)`: a raw message to `coupon.commands` (for what the typed client refuses to
  build, such as invalid commands);
- `replay(path_or_messages)`: one `ReplayOutcome` per command, in command order;
- `dead_letters()`: the dead-lettered commands so far (taken from the dead-letter queue);
- `take_queue(name)`: every message now in a queue, taken (a subscriber's `<queue>.dead`);
- `events()`: a started `EventCollector` of everything on `coupon.events`.

Over 250 lines for a reason: the two backends behind one surface, side by side, so that a
difference between them shows at once.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterable
from typing import Protocol

import aio_pika

from contracts import amqp
from contracts.client import AmqpCouponClient
from contracts.commands import Command
from contracts.errors import CommandUnroutable
from contracts.messages import CommandMessage
from contracts.names import Topology
from contracts.protocol import CouponClient
from contracts.recording import RecordedMessage
from contracts.replay import Replayer
from contracts.testing.broker_replay import ReplayError, replay_through_broker
from contracts.testing.collector import EventCollector
from contracts.testing.memory import FakeBroker, FakeCouponClient
from contracts.testing.outcomes import (
    ReplayOutcome,
    outcome_of,
    prepared_for_replay,
    replay_messages,
)
from contracts.testing.real import RealSettings, WorkerProcess, connect_client

ReplaySource = str | os.PathLike[str] | Iterable[RecordedMessage | CommandMessage | Command]


class CouponBackend(Protocol):
    """What the `coupon_backend` fixture gives: a worker (real or fake) and a client of it."""

    name: str
    topology: Topology

    @property
    def client(self) -> CouponClient:
        """A client of this backend's worker."""
        ...

    async def publish(self, message: RecordedMessage) -> None:
        """A raw message to `coupon.commands` (`CommandUnroutable` if no queue takes it)."""
        ...

    async def replay(self, source: ReplaySource) -> list[ReplayOutcome]:
        """One outcome per command of `source`, in command order."""
        ...

    async def dead_letters(self) -> list[RecordedMessage]:
        """The commands dead-lettered so far, taken from the dead-letter queue."""
        ...

    async def take_queue(self, name: str) -> list[RecordedMessage]:
        """Every message now in the queue `name`, taken (acknowledged) from it."""
        ...

    async def events(self) -> EventCollector:
        """A started collector of everything published on `coupon.events` from now on."""
        ...

    async def delete_queue(self, name: str) -> None:
        """Delete the queue `name` (a subscriber's, at the end of a test)."""
        ...

    async def aclose(self) -> None:
        """Stop and remove everything this backend started."""
        ...


class MemoryBackend:
    """The in-memory backend (`contracts.testing.memory`)."""

    name = "memory"

    def __init__(self) -> None:
        self.topology = Topology(f"mem{uuid.uuid4().hex[:8]}-")
        self.broker = FakeBroker(self.topology)
        self._client = FakeCouponClient(self.broker)
        self._collectors: list[EventCollector] = []

    @property
    def client(self) -> FakeCouponClient:
        return self._client

    async def publish(self, message: RecordedMessage) -> None:
        self.broker.publish(message)

    async def replay(self, source: ReplaySource) -> list[ReplayOutcome]:
        messages = replay_messages(source, self.topology.commands_exchange)
        reply_to = f"amq.rabbitmq.reply-to.replay-{uuid.uuid4().hex}"
        loop = asyncio.get_running_loop()
        answers = {f"replay-{index}": loop.create_future() for index in range(len(messages))}

        def answer(message: RecordedMessage) -> None:
            future = answers.get(str(message.properties.correlation_id))
            if future is not None and not future.done():
                future.set_result(message)

        self.broker.on_reply(reply_to, answer)
        try:
            for index, message in enumerate(prepared_for_replay(messages, reply_to)):
                try:
                    self.broker.publish(message)
                except CommandUnroutable:
                    raise ReplayError(
                        f"command {index + 1} ({message.routing_key}) reaches no queue"
                    ) from None
            replies: list[RecordedMessage] = await asyncio.gather(*answers.values())
        finally:
            self.broker.forget_reply(reply_to)
        outcomes = []
        for command, reply in zip(messages, replies, strict=True):
            received = reply.received()
            error = received.headers.get("x-error")
            outcomes.append(
                outcome_of(
                    command,
                    received.routing_key,
                    received.message_id,
                    None if error is None else str(error),
                    received.body,
                )
            )
        return outcomes

    async def dead_letters(self) -> list[RecordedMessage]:
        taken, self.broker.dead_letters[:] = list(self.broker.dead_letters), []
        return taken

    async def take_queue(self, name: str) -> list[RecordedMessage]:
        queue = self.broker.queues.get(name)
        if queue is None:
            return []
        taken = [message for message, _ in queue.messages]
        queue.messages.clear()
        return taken

    async def events(self) -> EventCollector:
        collector = EventCollector()
        subscription = self._client.subscribe(["#"])
        await subscription.open()
        collector.follow(subscription)
        self._collectors.append(collector)
        return collector

    async def delete_queue(self, name: str) -> None:
        self.broker.queues.pop(name, None)

    async def aclose(self) -> None:
        for collector in self._collectors:
            await collector.stop()
        await self.broker.aclose()


class RealBackend:
    """The real backend: RabbitMQ, PostgreSQL and a `coupon-worker run` process
    (`contracts.testing.real`)."""

    name = "real"

    def __init__(self, settings: RealSettings) -> None:
        self.settings = settings
        self.worker: WorkerProcess | None = None
        self.topology = Topology(settings.worker_prefix or "")
        self._client: AmqpCouponClient | None = None
        self._collectors: list[EventCollector] = []

    @classmethod
    async def start(cls, settings: RealSettings | None = None) -> RealBackend:
        backend = cls(settings or RealSettings.from_environment())
        if backend.settings.worker_prefix is None:
            backend.worker = WorkerProcess(backend.settings)
            backend.topology = Topology(backend.worker.prefix)
            try:
                await backend.worker.start()
            except BaseException:
                await backend.worker.stop()
                raise
        backend._client = await connect_client(backend.settings, backend.topology.prefix)
        return backend

    @property
    def client(self) -> AmqpCouponClient:
        assert self._client is not None, "start() first"
        return self._client

    async def publish(self, message: RecordedMessage) -> None:
        channel = await self.client.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        try:
            await Replayer(channel, exchange=self.topology.commands_exchange).publish(message)
        except aio_pika.exceptions.DeliveryError as error:
            raise CommandUnroutable(message.routing_key, message.properties.message_id) from error
        finally:
            await channel.close()

    async def replay(self, source: ReplaySource) -> list[ReplayOutcome]:
        messages = replay_messages(source, self.topology.commands_exchange)
        return await replay_through_broker(self.client.connection, self.topology, messages)

    async def dead_letters(self) -> list[RecordedMessage]:
        return await self.take_queue(self.topology.dead_queue)

    async def take_queue(self, name: str) -> list[RecordedMessage]:
        channel = await self.client.connection.channel()
        try:
            queue = await channel.get_queue(name, ensure=False)
            taken = []
            while (message := await queue.get(fail=False, no_ack=False)) is not None:
                taken.append(amqp.to_recorded(message))
                await message.ack()
            return taken
        finally:
            await channel.close()

    async def events(self) -> EventCollector:
        collector = EventCollector()
        subscription = self.client.subscribe(["#"])
        await subscription.open()  # bound before the fixture returns: nothing is missed
        collector.follow(subscription)
        self._collectors.append(collector)
        return collector

    async def delete_queue(self, name: str) -> None:
        channel = await self.client.connection.channel()
        try:
            await channel.queue_delete(name)
        finally:
            await channel.close()

    async def aclose(self) -> None:
        for collector in self._collectors:
            await collector.stop()
        if self._client is not None:
            await self._client.close()
        if self.worker is not None:
            await self.worker.stop()


async def open_backend(name: str) -> MemoryBackend | RealBackend:
    """A started backend by name: `memory` or `real`."""
    if name == "memory":
        return MemoryBackend()
    if name == "real":
        return await RealBackend.start()
    raise ValueError(f"unknown coupon backend {name!r}: memory or real")
