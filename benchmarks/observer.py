"""The judge's ears: every outcome that reaches `coupon.events` or the reply queue, timed on
arrival in this process. Throughput and latency are read from here, never from the worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from contracts import names
from contracts.names import Topology


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # time.perf_counter() in this process
    command_id: str  # the command's message_id (causation_id header, else correlation_id)
    outcome_id: str  # the outcome's message_id
    outcome_type: str
    channel: str  # "event" or "reply"
    body: bytes


class Observer:
    """Consumes a queue bound to the events exchange and a reply queue, without acks (the
    broker pushes as fast as this process reads). Queues are named from the run's prefix."""

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        self._channel = channel
        self.topology = topology
        self.reply_to = f"{topology.prefix}bench.replies"
        self.arrivals: list[Arrival] = []
        self._command_ids: set[str] = set()
        self._new = asyncio.Event()
        self._queues: list[AbstractQueue] = []

    async def start(self) -> None:
        events = await self._channel.declare_queue(
            f"{self.topology.prefix}bench.events", exclusive=True
        )
        await events.bind(self.topology.events_exchange, routing_key="#")
        replies = await self._channel.declare_queue(self.reply_to, exclusive=True)
        self._queues = [events, replies]
        await events.consume(self._on_event, no_ack=True)
        await replies.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        for queue in self._queues:
            await queue.delete(if_unused=False, if_empty=False)

    @property
    def answered(self) -> int:
        """Commands with at least one outcome so far."""
        return len(self._command_ids)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        self._record(message, "event")

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        self._record(message, "reply")

    def _record(self, message: AbstractIncomingMessage, channel: str) -> None:
        at = time.perf_counter()
        causation = (message.headers or {}).get(names.CAUSATION_ID_HEADER)
        command_id = causation if isinstance(causation, str) else message.correlation_id or ""
        self.arrivals.append(
            Arrival(
                at,
                command_id,
                message.message_id or "",
                message.type or message.routing_key or "",
                channel,
                message.body,
            )
        )
        self._command_ids.add(command_id)
        self._new.set()

    async def wait_answered(
        self, count: int, within: float, idle: float, alive: Callable[[], bool]
    ) -> bool:
        """Wait until `count` commands have an outcome; give up after `within` seconds, after
        `idle` seconds without any new outcome, or as soon as the target is not `alive`.
        True if all arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last_news = loop.time()
        while self.answered < count:
            now = loop.time()
            if now > deadline or now - last_news > idle or not alive():
                return False
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 1.0)
                last_news = loop.time()
            except TimeoutError:
                pass
        return True
