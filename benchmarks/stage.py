"""One run's world: a broker name prefix nobody else uses (its topology declared exactly as the
worker declares it), the observer on its events and replies, and for the worker a fresh
database. Contract v1 warns that a stray robust worker re-declares its queue and consumes on,
so a fresh prefix per run, and a count of the consumers before and after, keep strangers out.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

from aio_pika.abc import AbstractConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks import database
from benchmarks.database import BenchmarkFailed
from benchmarks.observer import Observer
from contracts.client import to_amqp
from contracts.messages import CommandMessage
from contracts.names import Topology
from worker.messaging import topology as worker_topology
from worker.settings import Settings

PUBLISH_WINDOW = 500  # unconfirmed publishes at a time while preloading


class Stage:
    def __init__(self, connection: AbstractConnection, amqp_url: str, admin_url: str) -> None:
        self.connection = connection
        self.amqp_url = amqp_url
        self.admin_url = admin_url
        self.prefix = f"bench{uuid.uuid4().hex[:10]}-"
        self.topology = Topology(self.prefix)
        self.observer: Observer | None = None
        self.database_url = ""
        self.engine: AsyncEngine | None = None

    async def open(self, with_database: bool) -> None:
        channel = await self.connection.channel()
        settings = Settings.model_validate({"name_prefix": self.prefix})
        await worker_topology.declare(channel, self.topology, settings)
        self.observer = Observer(channel, self.topology)
        await self.observer.start()
        if with_database:
            self.database_url = await database.create_database(self.admin_url)
            await database.migrate(self.database_url, self.amqp_url)
            self.engine = create_async_engine(self.database_url, pool_size=2)

    @property
    def reply_to(self) -> str:
        assert self.observer is not None, "open() first"
        return self.observer.reply_to

    async def preseed(self, coupons: dict[str, int]) -> None:
        """Coupons the plan expects to exist (only a stage with a database: the ceiling has
        none and answers without looking)."""
        if coupons and self.engine is not None:
            await database.preseed(self.engine, coupons)

    async def preload(
        self, messages: Sequence[CommandMessage], advance: Callable[[int], None]
    ) -> None:
        """Publish every command (confirmed, unroutable raises) before the target starts."""
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            exchange = await channel.get_exchange(self.topology.commands_exchange, ensure=False)
            for first in range(0, len(messages), PUBLISH_WINDOW):
                window = messages[first : first + PUBLISH_WINDOW]
                await asyncio.gather(
                    *(exchange.publish(to_amqp(m), m.routing_key, mandatory=True) for m in window)
                )
                advance(len(window))
        finally:
            await channel.close()
        queued = await self.depth(self.topology.worker_queue)
        if queued != len(messages):
            raise BenchmarkFailed(f"{len(messages)} commands preloaded, {queued} in the queue")

    async def _passive(self, queue: str) -> tuple[int, int]:
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            result = declared.declaration_result
            return int(result.message_count or 0), int(result.consumer_count or 0)
        finally:
            await channel.close()

    async def depth(self, queue: str) -> int:
        return (await self._passive(queue))[0]

    async def expect_consumers(self, count: int, when: str, within: float = 15.0) -> None:
        """Exactly `count` consumers on the worker queue. The worker holds two for a moment
        when it leaves its careful start (it consumes again with the full prefetch, then
        cancels the first), so this polls until the count settles."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (attached := (await self._passive(self.topology.worker_queue))[1]) != count:
            if loop.time() > deadline:
                raise BenchmarkFailed(
                    f"{when}: {attached} consumers on {self.topology.worker_queue}, expected "
                    f"{count}: another process is consuming the benchmark's queue"
                )
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Remove the queues, exchanges and database of this run (its target is stopped)."""
        if self.observer is not None:
            await self.observer.close()
        channel = await self.connection.channel()
        try:
            for queue in (self.topology.worker_queue, self.topology.dead_queue):
                await channel.queue_delete(queue)
            for exchange in (
                self.topology.commands_exchange,
                self.topology.events_exchange,
                self.topology.dead_exchange,
            ):
                await channel.exchange_delete(exchange)
        finally:
            await channel.close()
        if self.engine is not None:
            await self.engine.dispose()
        if self.database_url:
            await database.drop_database(self.admin_url, self.database_url)
