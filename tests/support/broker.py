"""The tests' own view of the broker: publish as a client would, collect what comes out."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from contracts.amqp import received, to_amqp
from contracts.client import ReceivedEvent
from contracts.commands import Command
from contracts.messages import command_message
from contracts.names import Topology
from worker.messaging import topology as worker_topology
from worker.settings import Settings


@dataclass
class Collected:
    """Messages received on one test queue, in arrival order."""

    messages: list[AbstractIncomingMessage] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    arrival_times: list[float] = field(default_factory=list)  # the loop's clock, per message

    def add(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)
        self.arrival_times.append(asyncio.get_running_loop().time())
        self.arrived.set()

    @property
    def events(self) -> list[ReceivedEvent]:
        return [received(m) for m in self.messages]

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.messages]

    async def wait_for(
        self, count: int, within: float = 30.0, what: str = "messages"
    ) -> list[AbstractIncomingMessage]:
        return await self.wait_until(lambda ms: len(ms) >= count, within, f"{count} {what}")

    async def wait_quiet(self, quiet: float = 1.0) -> list[AbstractIncomingMessage]:
        """Until nothing new has arrived for `quiet` seconds: a check that nothing *else*
        came (no late duplicate, no stray reply) needs this before it counts."""
        while True:
            seen = len(self.messages)
            await asyncio.sleep(quiet)
            if len(self.messages) == seen:
                return self.messages

    async def wait_until(
        self,
        done: Callable[[list[AbstractIncomingMessage]], bool],
        within: float = 30.0,
        what: str = "the expected messages",
    ) -> list[AbstractIncomingMessage]:
        async def wait() -> None:
            while not done(self.messages):
                self.arrived.clear()
                await self.arrived.wait()

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {within}s waiting for {what}; got {len(self.messages)}"
            ) from None
        return self.messages


class Broker:
    def __init__(self, amqp_url: str, prefix: str, *, robust: bool = False) -> None:
        self.amqp_url = amqp_url
        # A robust connection reconnects, re-declares its queues and consumes again after the
        # broker restarts or closes it (the fault tests that restart the broker need that).
        self.robust = robust
        self.topology = Topology(prefix)
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self._collectors: list[str] = []
        # Arguments of the event collector queues (a cluster test makes them quorum queues).
        self.collector_arguments: dict[str, Any] | None = None

    async def open(self) -> None:
        if self.robust:
            self.connection = await aio_pika.connect_robust(self.amqp_url, reconnect_interval=1)
        else:
            self.connection = await aio_pika.connect(self.amqp_url)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    @property
    def ch(self) -> AbstractChannel:
        assert self.channel is not None, "open() first"
        return self.channel

    async def declare(self, settings: Settings) -> None:
        await worker_topology.declare(self.ch, self.topology, settings)

    async def delete_topology(self) -> None:
        """Remove every queue and exchange of this test's prefix (workers must be stopped)."""
        assert self.connection is not None
        channel = await self.connection.channel()
        for queue in (self.topology.worker_queue, self.topology.dead_queue, *self._collectors):
            await channel.queue_delete(queue)
        for exchange in (
            self.topology.commands_exchange,
            self.topology.events_exchange,
            self.topology.dead_exchange,
        ):
            await channel.exchange_delete(exchange)
        await channel.close()

    # --- publishing ---------------------------------------------------------------------

    async def send(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        message = command_message(
            command, message_id=message_id, reply_to=reply_to, correlation_id=correlation_id
        )
        exchange = await self.ch.get_exchange(self.topology.commands_exchange, ensure=False)
        await exchange.publish(to_amqp(message), message.routing_key)
        return message.message_id

    async def send_raw(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        content_type: str | None = "application/json",
        **properties: Any,
    ) -> str:
        message_id = message_id or str(uuid.uuid4())
        exchange = await self.ch.get_exchange(self.topology.commands_exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                content_type=content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                **properties,
            ),
            routing_key,
        )
        return message_id

    def send_without_message_id(self, routing_key: str, body: bytes) -> None:
        """aiormq stamps a message_id on every publish, so this uses another client (pika)."""
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish(
                self.topology.commands_exchange,
                routing_key,
                body,
                pika.BasicProperties(content_type="application/json", delivery_mode=2),
                mandatory=True,
            )
        finally:
            connection.close()

    # --- receiving ----------------------------------------------------------------------

    async def collect(
        self, exchange: str, pattern: str = "#", *, durable: bool = False
    ) -> Collected:
        """A queue bound to `exchange` from now on, consumed into a `Collected`. A `durable`
        one keeps what arrives while the broker restarts."""
        collected = Collected()
        name = f"{self.topology.prefix}test-{uuid.uuid4().hex[:8]}"
        queue = await self.ch.declare_queue(
            name, auto_delete=False, durable=durable, arguments=self.collector_arguments
        )
        self._collectors.append(name)
        await queue.bind(exchange, routing_key=pattern)

        async def on_message(message: AbstractIncomingMessage) -> None:
            collected.add(message)
            await message.ack()

        await queue.consume(on_message)
        return collected

    async def collect_events(self) -> Collected:
        return await self.collect(self.topology.events_exchange)

    async def reply_queue(self) -> tuple[str, Collected]:
        collected = Collected()
        queue = await self.ch.declare_queue(exclusive=True, auto_delete=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            collected.add(message)
            await message.ack()

        await queue.consume(on_message)
        return queue.name, collected

    async def drain_queue(self, name: str) -> list[AbstractIncomingMessage]:
        """Take (and ack) every message now in `name`."""
        queue = await self.ch.get_queue(name, ensure=False)
        taken = []
        while (message := await queue.get(fail=False, no_ack=False)) is not None:
            await message.ack()
            taken.append(message)
        return taken

    async def dead_letters(self) -> list[AbstractIncomingMessage]:
        return await self.drain_queue(self.topology.dead_queue)

    async def wait_dead_letters(
        self, count: int, within: float, quiet: float = 0.5
    ) -> list[AbstractIncomingMessage]:
        """Drain the dead-letter queue until `count` arrived, then for `quiet` seconds more, so
        that a letter too many is seen too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        taken: list[AbstractIncomingMessage] = []
        while len(taken) < count:
            assert loop.time() < deadline, f"only {len(taken)} of {count} dead letters arrived"
            taken += await self.dead_letters()
            if len(taken) < count:
                await asyncio.sleep(0.1)
        await asyncio.sleep(quiet)
        return taken + await self.dead_letters()

    async def depth(self, name: str) -> int:
        channel = await self.connection.channel() if self.connection else None
        assert channel is not None
        try:
            declared = await channel.declare_queue(name, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def wait_queue(self, name: str, within: float = 60.0) -> None:
        """Wait until `name` answers a passive declare (a quorum queue needs its node up and a
        leader elected after a broker restart)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                await self.depth(name)
                return
            except Exception as error:
                if loop.time() > deadline:
                    raise AssertionError(f"queue {name} unavailable after {within}s") from error
                await asyncio.sleep(0.5)

    async def consumers(self, name: str) -> int:
        channel = await self.connection.channel() if self.connection else None
        assert channel is not None
        try:
            declared = await channel.declare_queue(name, passive=True)
            return int(declared.declaration_result.consumer_count or 0)
        finally:
            await channel.close()
