"""The benchmark's own world: a database and a broker name prefix nobody else uses, real worker
processes on them, and a clock on every outcome event that comes back.

Contract v1 warns that a stray robust worker keeps competing for commands after its topology
was torn down, so every measurement checks that the consumers on its queue are exactly the
workers it started, before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.client import to_amqp
from contracts.commands import Command, CreateCoupon, RedeemCoupon
from contracts.messages import CommandMessage, command_message
from tests.support.broker import Broker
from tests.support.database import create_database, drop_database
from tests.support.worker_process import WorkerProcess
from worker.db import migrations
from worker.db.tables import Coupon, ProcessedCommand
from worker.settings import Settings

# How many coupons the redeems spread over, and how many redemptions each one holds.
SHARED_COUPONS = 200
SHARED_COUPON_COUNT = 1_000_000


class BenchmarkError(Exception):
    """The measurement cannot be trusted (another consumer, lost commands, a dead worker)."""


@dataclass
class OutcomeClock:
    """Arrival time of the first copy of each outcome event (by its event `message_id`)."""

    seen: set[str] = field(default_factory=set)
    arrivals: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.seen.clear()
        self.arrivals.clear()

    def on_message(self, message: AbstractIncomingMessage) -> None:
        key = message.message_id or ""
        if key not in self.seen:
            self.seen.add(key)
            self.arrivals.append(time.time())
            self.changed.set()

    async def wait_for(self, count: int, within: float) -> float:
        """Wall-clock time at which the `count`th distinct outcome arrived."""
        async with asyncio.timeout(within):
            while len(self.arrivals) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.arrivals[count - 1]


class Bench:
    """One benchmark run's services: call `open()` first and `close()` at the end."""

    def __init__(self, amqp_url: str, admin_database_url: str, log_level: str) -> None:
        self.amqp_url = amqp_url
        self.admin_database_url = admin_database_url
        self.log_level = log_level
        self.prefix = f"bench{uuid.uuid4().hex[:8]}-"
        self.database_url = ""
        self.settings: Settings | None = None
        self.broker = Broker(amqp_url, self.prefix)
        self.engine: AsyncEngine | None = None
        self.clock = OutcomeClock()
        self._channel: AbstractChannel | None = None
        self._events_queue: AbstractQueue | None = None
        self.shared_codes = [f"bench-shared-{i}" for i in range(SHARED_COUPONS)]

    # --- set-up and tear-down --------------------------------------------------------------

    async def open(self) -> None:
        self.database_url = await create_database(self.admin_database_url, "coupon_bench")
        self.engine = create_async_engine(self.database_url)
        await migrations.upgrade(self.engine)
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(Coupon),
                [
                    {
                        "id": uuid.uuid4(),
                        "code": code,
                        "init_count": SHARED_COUPON_COUNT,
                        "remaining_count": SHARED_COUPON_COUNT,
                    }
                    for code in self.shared_codes
                ],
            )
        self.settings = Settings.model_validate(
            {
                "AMQP_URL": self.amqp_url,
                "DATABASE_URL": self.database_url,
                "name_prefix": self.prefix,
            }
        )
        await self.broker.open()
        await self.broker.declare(self.settings)
        assert self.broker.connection is not None
        self._channel = await self.broker.connection.channel()
        await self._channel.set_qos(prefetch_count=1000)
        events = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await events.bind(self.broker.topology.events_exchange, routing_key="#")
        await events.consume(self._on_event, no_ack=True)
        self._events_queue = events

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        self.clock.on_message(message)

    async def close(self) -> None:
        """Tear everything down; workers must have been stopped (see `workers`)."""
        with contextlib.suppress(Exception):
            await self.broker.delete_topology()
        with contextlib.suppress(Exception):
            await self.broker.close()
        if self.engine is not None:
            await self.engine.dispose()
        if self.database_url:
            await drop_database(self.admin_database_url, self.database_url)

    # --- workers ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def workers(self, count: int, batch_size: int) -> AsyncIterator[list[WorkerProcess]]:
        """`count` worker processes on this run's queue, ready, and the only consumers there.
        They are stopped with SIGTERM (and killed if that fails) on the way out."""
        environment = {
            "AMQP_URL": self.amqp_url,
            "DATABASE_URL": self.database_url,
            "WORKER_NAME_PREFIX": self.prefix,
            "WORKER_BATCH_SIZE": str(batch_size),
            "WORKER_LOG_LEVEL": self.log_level,
        }
        started = [WorkerProcess(environment, f"bench-worker-{i}").start() for i in range(count)]
        try:
            await asyncio.gather(*(worker.wait_ready(within=60) for worker in started))
            await self.expect_consumers(count, "workers ready")
            yield started
            await self.expect_consumers(count, "measurement done")
        finally:
            codes: list[int | BaseException] = []
            try:
                codes = await asyncio.gather(
                    *(worker.stop(within=60) for worker in started), return_exceptions=True
                )
            finally:
                # Even when interrupted: a worker left running would keep consuming (and, being
                # robust, re-declare the queue after the teardown).
                for worker in started:
                    worker.kill()
        if any(code != 0 for code in codes):
            raise BenchmarkError(f"a worker did not stop cleanly: exit codes {codes}")

    async def expect_consumers(self, count: int, when: str, within: float = 10.0) -> None:
        """Exactly `count` consumers on the worker queue. A worker may hold two for a moment
        (it re-subscribes with its full prefetch after a careful start), so this polls."""
        deadline = time.monotonic() + within
        while (attached := await self.broker.consumers(self.broker.topology.worker_queue)) != count:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if attached != count:
            raise BenchmarkError(
                f"{when}: {attached} consumers on {self.broker.topology.worker_queue}, expected "
                f"{count}: another process is consuming the benchmark's queue"
            )

    async def expect_empty_queue(self) -> None:
        depth = await self.broker.depth(self.broker.topology.worker_queue)
        if depth:
            raise BenchmarkError(f"{depth} commands left in the worker queue")

    # --- commands --------------------------------------------------------------------------

    def workload(self, size: int, creates: float, tag: str) -> list[CommandMessage]:
        """`size` commands: a share of creates of new codes, the rest redeems of shared coupons
        (which never run out during a run)."""
        commands: list[Command] = []
        for i in range(size):
            if random.random() < creates:
                commands.append(CreateCoupon(code=f"bench-{tag}-{i}", init_count=10))
            else:
                commands.append(RedeemCoupon(code=random.choice(self.shared_codes)))
        return [command_message(command) for command in commands]

    async def publish(
        self, messages: Sequence[CommandMessage], in_flight: int = 200
    ) -> tuple[float, float]:
        """Publish with confirms, `in_flight` unconfirmed at a time. Returns (start, end)."""
        channel = self.broker.ch
        exchange = await channel.get_exchange(self.broker.topology.commands_exchange, ensure=False)
        started = time.time()
        for first in range(0, len(messages), in_flight):
            chunk = messages[first : first + in_flight]
            await asyncio.gather(
                *(exchange.publish(to_amqp(message), message.routing_key) for message in chunk)
            )
        return started, time.time()

    async def processed_count(self) -> int:
        assert self.engine is not None
        async with self.engine.connect() as connection:
            count = await connection.scalar(select(func.count()).select_from(ProcessedCommand))
        return int(count or 0)

    async def reply_queue(
        self,
    ) -> tuple[str, dict[str, asyncio.Future[float]]]:
        """An exclusive reply queue; each reply resolves the future waiting on its
        correlation_id with the wall-clock time it arrived."""
        assert self._channel is not None
        waiting: dict[str, asyncio.Future[float]] = {}
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)

        async def on_reply(message: AbstractIncomingMessage) -> None:
            future = waiting.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())

        await queue.consume(on_reply, no_ack=True)
        return queue.name, waiting


def ready_time(worker: WorkerProcess) -> float:
    """Wall-clock time at which the worker logged `worker_ready` (it consumes from then on)."""
    records = worker.events("worker_ready")
    if not records:
        raise BenchmarkError(f"{worker.name} never logged worker_ready")
    return datetime.fromisoformat(str(records[0]["timestamp"])).timestamp()
