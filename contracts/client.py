"""A ready-made aio-pika client for services that talk to the coupon worker.

Optional: needs the `client` extra (aio-pika). `contracts` itself imports only pydantic.

    async with await CouponClient.connect("amqp://guest:guest@localhost/") as client:
        reply = await client.request(CreateCoupon(code="SPRING", init_count=100))
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from contracts import names
from contracts.commands import Command
from contracts.events import Event, InvalidCommandReply
from contracts.messages import CommandMessage, command_message, parse_event
from contracts.names import Topology


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An outcome as received: its model plus the AMQP properties consumers de-duplicate by."""

    routing_key: str
    event: Event | InvalidCommandReply
    message_id: str | None
    correlation_id: str | None
    causation_id: str | None
    body: bytes


def read_outcome(message: AbstractIncomingMessage, routing_key: str | None = None) -> ReceivedEvent:
    key = routing_key or message.type or message.routing_key or ""
    event: Event | InvalidCommandReply
    if key == names.INVALID:
        event = InvalidCommandReply.model_validate_json(message.body)
    else:
        event = parse_event(key, message.body)
    causation = (message.headers or {}).get(names.CAUSATION_ID_HEADER)
    return ReceivedEvent(
        routing_key=key,
        event=event,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        causation_id=str(causation) if causation is not None else None,
        body=message.body,
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
    """The AMQP message; with OpenTelemetry installed, headers carry the current trace
    (W3C traceparent) on to the worker, its spans and its outcome."""
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
        headers=headers or None,
    )


class CouponClient:
    def __init__(
        self, connection: AbstractConnection, channel: AbstractChannel, topology: Topology
    ):
        self.connection = connection
        self.channel = channel
        self.topology = topology

    @classmethod
    async def connect(cls, url: str, prefix: str = "", **connect_kwargs: Any) -> CouponClient:
        connection = await aio_pika.connect_robust(url, **connect_kwargs)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(connection, channel, Topology(prefix))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.connection.close()

    async def send(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> str:
        """Publish a command (confirmed; an unroutable one raises). Returns its message_id."""
        message = command_message(
            command, message_id=message_id, correlation_id=correlation_id, reply_to=reply_to
        )
        await self.publish(message)
        return message.message_id

    async def publish(self, message: CommandMessage) -> None:
        exchange = await self.channel.get_exchange(self.topology.commands_exchange, ensure=False)
        await exchange.publish(to_amqp(message), message.routing_key, mandatory=True)

    async def request(
        self, command: Command, *, message_id: str | None = None, within: float = 30.0
    ) -> ReceivedEvent:
        """Send a command and wait for its outcome on an exclusive reply queue."""
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        try:
            message_id = message_id or str(uuid.uuid4())
            async with queue.iterator() as replies:
                await self.send(command, message_id=message_id, reply_to=queue.name)
                async with asyncio.timeout(within):
                    async for reply in replies:
                        await reply.ack()
                        if reply.correlation_id == message_id:
                            return read_outcome(reply)
        finally:
            await queue.delete(if_unused=False, if_empty=False)
        raise TimeoutError  # pragma: no cover - the iterator only ends on close

    async def events(self, pattern: str = "coupon.*") -> AsyncIterator[ReceivedEvent]:
        """Follow `coupon.events` from now on (an exclusive queue bound with `pattern`)."""
        exchange = await self.channel.get_exchange(self.topology.events_exchange, ensure=False)
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=pattern)
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                yield read_outcome(message, message.routing_key)
