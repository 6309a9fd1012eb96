"""One run's world: a broker name prefix nobody else uses (its topology declared exactly as the
worker declares it), the observer on its events and replies, and for the worker a fresh
database. Contract v1 warns that a stray robust worker re-declares its queue and consumes on,
so a fresh prefix per run, and a count of the consumers before and after, keep strangers out.

The broker and database helpers are the test suite's (tests/support), so that the benchmark
and the tests set up and tear down their worlds the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks import database
from benchmarks.database import BenchmarkFailed
from benchmarks.observer import Observer
from contracts.amqp import to_amqp
from contracts.messages import CommandMessage
from tests.support.broker import Broker
from tests.support.database import create_database, drop_database
from worker.settings import Settings

PUBLISH_WINDOW = 500  # unconfirmed publishes at a time while preloading
DATABASE_PREFIX = "coupon_bench"


class Stage:
    def __init__(self, amqp_url: str, admin_url: str, database_url: str = "") -> None:
        """`database_url`: a database that exists (the growth phase's grown tables), used as
        it is and kept; else the worker's stage gets a fresh one, dropped at the end."""
        self.amqp_url = amqp_url
        self.admin_url = admin_url
        self.prefix = f"bench{uuid.uuid4().hex[:10]}-"
        self.broker = Broker(amqp_url, self.prefix)
        self.topology = self.broker.topology
        self.observer: Observer | None = None
        self.database_url = database_url
        self._owns_database = not database_url
        self.engine: AsyncEngine | None = None

    async def open(self, with_database: bool) -> None:
        await self.broker.open()
        await self.broker.declare(Settings.model_validate({"name_prefix": self.prefix}))
        assert self.broker.connection is not None
        self.observer = Observer(await self.broker.connection.channel(), self.topology)
        await self.observer.start()
        if with_database:
            if self._owns_database:
                self.database_url = await create_database(self.admin_url, DATABASE_PREFIX)
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
        exchange = await self.broker.ch.get_exchange(self.topology.commands_exchange, ensure=False)
        for first in range(0, len(messages), PUBLISH_WINDOW):
            window = messages[first : first + PUBLISH_WINDOW]
            await asyncio.gather(
                *(exchange.publish(to_amqp(m), m.routing_key, mandatory=True) for m in window)
            )
            advance(len(window))
        queued = await self.broker.depth(self.topology.worker_queue)
        if queued != len(messages):
            raise BenchmarkFailed(f"{len(messages)} commands preloaded, {queued} in the queue")

    async def expect_consumers(self, count: int, when: str, within: float = 15.0) -> None:
        """Exactly `count` consumers on the worker queue. The worker holds two for a moment
        when it leaves its careful start (it consumes again with the full prefetch, then
        cancels the first), so this polls until the count settles."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (attached := await self.broker.consumers(self.topology.worker_queue)) != count:
            if loop.time() > deadline:
                raise BenchmarkFailed(
                    f"{when}: {attached} consumers on {self.topology.worker_queue}, expected "
                    f"{count}: another process is consuming the benchmark's queue"
                )
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Remove the queues, exchanges and database of this run (its target is stopped)."""
        try:
            if self.observer is not None:
                await self.observer.close()
            if self.broker.connection is not None:
                await self.broker.delete_topology()
        finally:
            await self.broker.close()
            if self.engine is not None:
                await self.engine.dispose()
            if self.database_url and self._owns_database:
                await drop_database(self.admin_url, self.database_url)
