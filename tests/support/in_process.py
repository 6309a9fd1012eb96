"""The consumer in this process, on the real broker, wired by the composition root's own
`build_consumer`, around a pipeline the test scripts (`ScriptedPipeline`: the real pipeline on
the in-memory fakes, recording each batch and failing on cue)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from contracts.names import Topology
from tests.fakes import FakeDatabase, FakeUnitOfWork
from tests.support.broker import Broker
from worker.app.outcomes import Outcome
from worker.app.pipeline import Envelope, Pipeline
from worker.messaging import topology as broker_topology
from worker.messaging.connection import connect_broker
from worker.messaging.consumer import Consumer, build_consumer
from worker.messaging.intake import DeliveryHook
from worker.messaging.outlet import Outlet
from worker.messaging.publisher import OutcomePublisher, Publisher
from worker.messaging.retry import RetryPolicy
from worker.messaging.supervisor import Supervisor
from worker.settings import Settings

# Short waits, so that a test of many retries takes a second, not a minute.
FAST_RETRIES = RetryPolicy(
    max_attempts=3, attempt_backoff=0.01, outage_backoff=0.01, outage_backoff_max=0.05
)


class ScriptedPipeline:
    """Implements `CommandPipeline`. Records the codes of every batch it is given, and how many
    other batches were in flight when it started; raises `failures` (one per call, in order)
    before processing, and always raises for a command on a code in `poison`. A batch waits
    for `gate` when set; `entered` is set when the first batch arrives."""

    def __init__(self) -> None:
        self.database = FakeDatabase()
        self._pipeline = Pipeline(lambda: FakeUnitOfWork(self.database))
        self.batches: list[list[str]] = []
        self.failures: list[Exception] = []
        self.poison: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.alongside: list[int] = []
        self.entered = asyncio.Event()
        self._in_flight = 0

    async def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        self.batches.append([envelope.command.code for envelope in batch])
        self.alongside.append(self._in_flight)
        self.entered.set()
        self._in_flight += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.failures:
                raise self.failures.pop(0)
            poisoned = self.poison.intersection(self.batches[-1])
            if poisoned:
                raise RuntimeError(f"poison {sorted(poisoned)}")
            return await self._pipeline.process(batch)
        finally:
            self._in_flight -= 1


async def wait_depth(broker: Broker, depth: int, within: float = 30.0) -> None:
    """Wait until the worker queue holds exactly `depth` ready messages."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (ready := await broker.depth(broker.topology.worker_queue)) != depth:
        assert loop.time() < deadline, f"{ready} ready in the worker queue, not {depth}"
        await asyncio.sleep(0.05)


@dataclass
class Channels:
    connection: AbstractRobustConnection
    consume: AbstractChannel
    queue: AbstractQueue
    publisher: Publisher


@asynccontextmanager
async def channels(settings: Settings) -> AsyncIterator[Channels]:
    """The worker's connection and channels on the test's topology (declared by the `broker`
    fixture), and a started publisher."""
    topology = Topology(settings.name_prefix)
    connection = await connect_broker(settings, name="in-process-test")
    try:
        consume = await connection.channel()
        queue = await broker_topology.worker_queue(consume, topology)
        events = await connection.channel(publisher_confirms=True)
        dead = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publisher = Publisher(events, dead, topology, settings.publish_timeout)
        await publisher.start()
        yield Channels(connection, consume, queue, publisher)
    finally:
        await connection.close()


@asynccontextmanager
async def running_consumer(
    settings: Settings,
    pipeline: ScriptedPipeline,
    *,
    retry: RetryPolicy = FAST_RETRIES,
    publisher: OutcomePublisher | None = None,
    on_delivery: DeliveryHook | None = None,
) -> AsyncIterator[Consumer]:
    """A started consumer, stopped (with a short grace period) when the block ends."""
    async with channels(settings) as opened:
        consumer = build_consumer(
            settings,
            pipeline,
            publisher or opened.publisher,
            retry=retry,
            on_delivery=on_delivery,
        )
        await consumer.start(opened.queue, opened.consume)
        try:
            yield consumer
        finally:
            await consumer.stop(grace_period=5.0)


@dataclass
class Supervised:
    supervisor: Supervisor
    outlet: Outlet
    running: asyncio.Task[None]  # `Supervisor.run`


@asynccontextmanager
async def running_supervisor(
    settings: Settings, pipeline: ScriptedPipeline, *, retry: RetryPolicy = FAST_RETRIES
) -> AsyncIterator[Supervised]:
    """The supervisor, its two links and a consumer, wired as the composition root wires them
    (around the scripted pipeline); stopped with a short grace period when the block ends
    (unless the test stopped it, or it ended by itself: then its outcome is the test's)."""
    outlet = Outlet()

    def new_consumer() -> Consumer:
        return build_consumer(
            settings, pipeline, outlet, retry=retry, ready_to_publish=outlet.wait_usable
        )

    supervisor = Supervisor(settings, Topology(settings.name_prefix), outlet, new_consumer)
    await supervisor.start()
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop, grace_period=5.0))
    try:
        await supervisor.wait_consuming()
        yield Supervised(supervisor, outlet, running)
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
