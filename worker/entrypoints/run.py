"""The composition root of `coupon-worker run`: settings → engine, connection → consumer.

The only module that knows every layer; the only one that wires fault injection in (when
`WORKER_FAULT_PLAN` is set, for the fault-test suite)."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.names import Topology
from worker.addresses import redact_url
from worker.app.pipeline import Pipeline
from worker.db import migrations
from worker.db.engine import database
from worker.db.unit_of_work import SqlAlchemyUnitOfWork, optimistic_units_of_work
from worker.domain.handlers import HandleCommand, handle
from worker.entrypoints.operator_errors import describe_startup_failure
from worker.messaging.connection import heartbeat
from worker.messaging.consumer import Consumer, build_consumer
from worker.messaging.outlet import Outlet
from worker.messaging.publisher import OutcomePublisher
from worker.messaging.retry import RetryPolicy
from worker.messaging.stuck import WorkerStuck
from worker.messaging.supervisor import Supervisor
from worker.observability import health
from worker.observability.instrumentation import Instrumentation
from worker.settings import Settings
from worker.testing.faults import FaultPlan
from worker.testing.injection import FaultInjection

log = structlog.stdlib.get_logger(__name__)

EXIT_STUCK = 1  # unable to consume for WORKER_STUCK_LIMIT (docs/operations.md, "Never stuck")


async def serve(settings: Settings, redact: Callable[[str], str], migrate: bool = False) -> int:
    faults = FaultPlan.parse(settings.fault_plan)
    if faults:
        log.warning("fault_injection_enabled", plan=settings.fault_plan)
    topology = Topology(settings.name_prefix)
    async with database(settings) as engine:
        try:
            if migrate:  # on an engine of its own: no statement timeout (the lock may wait)
                async with database(settings, admin=True) as admin:
                    migration = await migrations.upgrade(admin)
                if migration.changed:
                    log.info(
                        "schema_migrated", from_revision=migration.before, revision=migration.after
                    )
            await migrations.ensure_current(engine)
        except Exception as error:
            raise describe_startup_failure(error, settings, "database") from error
        return await _consume(settings, engine, topology, faults, redact)


async def _consume(
    settings: Settings,
    engine: AsyncEngine,
    topology: Topology,
    faults: FaultPlan,
    redact: Callable[[str], str],
) -> int:
    # Decorators at the edge: metrics and traces (`instruments`), then fault injection.
    instruments = Instrumentation(topology)
    instruments.database(engine)
    # Every batch through the locking unit of work, but a batch of one command (every batch at
    # a low rate) tried first through the optimistic one: two round trips instead of four.
    unit_of_work = instruments.unit_of_work(lambda: SqlAlchemyUnitOfWork(engine))
    lone_unit_of_work = instruments.unit_of_work(optimistic_units_of_work(engine))
    handler: HandleCommand = handle
    outlet = Outlet()
    outcomes: OutcomePublisher = instruments.publisher(outlet)
    if faults:
        injection = FaultInjection(faults)
        unit_of_work = injection.unit_of_work(unit_of_work)
        lone_unit_of_work = injection.unit_of_work(lone_unit_of_work)
        handler = injection.handle(handler)
        outcomes = injection.publisher(outcomes)
    pipeline = instruments.pipeline(
        Pipeline(
            unit_of_work,
            handler,
            lone_unit_of_work=lone_unit_of_work,
            on_lone_conflict=lambda: instruments.metrics.retried("transaction_conflict"),
        )
    )
    # One outage log across consumers; every try again counted by reason.
    retry = RetryPolicy.from_settings(settings, on_retry=instruments.metrics.retried)

    def new_consumer() -> Consumer:
        return build_consumer(
            settings,
            pipeline,
            outcomes,
            retry=retry,
            redact=redact,
            on_delivery=instruments.delivered,
            ready_to_publish=outlet.wait_usable,
        )

    metrics = instruments.metrics
    supervisor = Supervisor(
        settings,
        topology,
        outlet,
        new_consumer,
        on_block=metrics.blocked,
        on_reconnect=lambda role: metrics.reconnects.labels(role).inc(),
        on_not_consuming=metrics.not_consuming.set,
    )
    try:
        await supervisor.start()
    except Exception as error:
        await supervisor.close()
        raise describe_startup_failure(error, settings, "broker") from error
    metrics.track_in_flight(lambda: supervisor.in_flight)

    stop = asyncio.Event()
    readiness = health.ReadinessMonitor(
        metrics,
        broker=lambda: supervisor.links_open,
        database=instruments.unobserved(lambda: _database_answers(engine)),
        consuming=lambda: supervisor.consuming and not stop.is_set(),
        dead_letters=lambda: _dead_letter_depth(supervisor, topology),
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    beating = asyncio.create_task(heartbeat(settings.health_file, supervisor.liveness))
    frozen = _freeze_startup_heap()
    # Connected and declared; the careful start runs now, and `worker_ready` follows it.
    log.info("worker_connected", queue=topology.worker_queue)
    try:
        async with health.serving(
            settings.http_host, settings.http_port, readiness, metrics, supervisor.liveness
        ):
            return await _run_until_stopped(settings, topology, supervisor, stop, beating, frozen)
    finally:
        await instruments.close()


async def _run_until_stopped(
    settings: Settings,
    topology: Topology,
    supervisor: Supervisor,
    stop: asyncio.Event,
    beating: asyncio.Task[None],
    frozen_objects: int,
) -> int:
    running = asyncio.create_task(supervisor.run(stop, settings.grace_period))
    # Ready means consuming: after the careful start (a redelivered head is taken alone
    # first), once the broker delivers to this worker, as the readiness probe says too.
    consuming = asyncio.create_task(supervisor.wait_consuming())
    await asyncio.wait({running, consuming}, return_when=asyncio.FIRST_COMPLETED)
    if consuming.done() and not consuming.cancelled() and consuming.exception() is None:
        _log_ready(settings, topology, frozen_objects)
    consuming.cancel()
    try:
        await running
    except WorkerStuck:
        # Logged (`worker_stuck`, with the reason) and its commands returned: exit non-zero,
        # without a traceback, for the process's supervisor to start it again.
        return EXIT_STUCK
    finally:
        beating.cancel()
        if settings.health_file is not None:
            settings.health_file.unlink(missing_ok=True)
        log.info(
            "worker_stopped",
            returned=supervisor.returned,
            seconds=round(time.monotonic() - supervisor.stopping_at, 2),
        )
    return 0


def _log_ready(settings: Settings, topology: Topology, frozen_objects: int) -> None:
    log.info(
        "worker_ready",
        frozen_objects=frozen_objects,
        queue=topology.worker_queue,
        broker=redact_url(settings.amqp_url.get_secret_value()),
        database=redact_url(settings.database_url.get_secret_value()),
        prefetch=settings.prefetch,
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
    )


def _freeze_startup_heap() -> int:
    """Move what start-up made (modules, mapped classes, compiled models, connections: some
    100,000 objects) out of the garbage collector's reach; returns how many. Every full
    collection walked them all: 70-95 ms with the event loop stopped (measured in process),
    delaying every command in flight; one fell inside a 10 s run at 200 commands/s, and 1 %
    of that run's commands is its p99 latency. What the worker creates from now on is
    collected as before."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _database_answers(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _dead_letter_depth(supervisor: Supervisor, topology: Topology) -> int:
    link = supervisor.consuming_link
    if link is None or not link.is_open:
        raise ConnectionError("no consuming connection")
    # A channel of its own: a failed passive declare closes the channel it was made on.
    async with link.connection.channel() as channel:
        declared = await channel.declare_queue(topology.dead_queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
