"""The composition root of `coupon-worker run`: settings → engine, connection → consumer."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.names import Topology
from worker.db import schema
from worker.db.engine import create_engine, create_session_factory
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.errors import describe_startup_failure
from worker.faults import FaultPlan
from worker.messaging import topology as broker_topology
from worker.messaging.consumer import Consumer
from worker.messaging.failover import connect_any
from worker.messaging.publisher import Publisher
from worker.pipeline import Pipeline
from worker.settings import Settings, redact_url

log = structlog.stdlib.get_logger("worker")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.amqp_ca_file is None and settings.amqp_client_cert is None:
        return None
    context = ssl.create_default_context(
        cafile=str(settings.amqp_ca_file) if settings.amqp_ca_file else None
    )
    if settings.amqp_client_cert is not None:
        context.load_cert_chain(
            str(settings.amqp_client_cert),
            str(settings.amqp_client_key) if settings.amqp_client_key else None,
        )
    return context


async def connect_broker(
    settings: Settings, name: str = "coupon-worker"
) -> AbstractRobustConnection:
    connection = await connect_any(
        settings.amqp_urls(),  # one or several nodes, tried in turn (worker.messaging.failover)
        ssl_context=ssl_context(settings),
        client_properties={"connection_name": name},
        attempt_timeout=10,
        reconnect_interval=1,
    )
    connection.close_callbacks.add(_log_connection_lost)
    connection.reconnect_callbacks.add(lambda _: log.info("broker_reconnected"))
    return connection


def _log_connection_lost(_: object, error: BaseException | None) -> None:
    # A close we asked for arrives as None or CancelledError: not worth a warning.
    if error is not None and not isinstance(error, asyncio.CancelledError):
        log.warning("broker_connection_lost", error=repr(error))


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        await engine.dispose()


async def serve(settings: Settings, redact: Callable[[str], str], migrate: bool = False) -> int:
    faults = FaultPlan.parse(settings.fault_plan)
    if faults:
        log.warning("fault_injection_enabled", plan=settings.fault_plan)
    topology = Topology(settings.name_prefix)
    async with database(settings) as engine:
        try:
            if migrate:
                migration = await schema.upgrade(engine)
                if migration.changed:
                    log.info(
                        "schema_migrated", from_revision=migration.before, revision=migration.after
                    )
            await schema.ensure_current(engine)
        except Exception as error:
            raise describe_startup_failure(error, settings, "database") from error
        try:
            connection = await connect_broker(settings)
        except Exception as error:
            raise describe_startup_failure(error, settings, "broker") from error
        try:
            return await _consume(settings, engine, connection, topology, faults, redact)
        finally:
            await connection.close()


async def _consume(
    settings: Settings,
    engine: AsyncEngine,
    connection: AbstractRobustConnection,
    topology: Topology,
    faults: FaultPlan,
    redact: Callable[[str], str],
) -> int:
    consume_channel = await connection.channel()
    if settings.declare_topology:
        queue = await broker_topology.declare(consume_channel, topology, settings)
    else:
        await broker_topology.verify(connection, topology)
        queue = await broker_topology.worker_queue(consume_channel, topology)
    events_channel = await connection.channel(publisher_confirms=True)
    dead_letter_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    publisher = Publisher(events_channel, dead_letter_channel, topology, settings.publish_timeout)
    await publisher.start()

    sessions = create_session_factory(engine)
    pipeline = Pipeline(lambda: SqlAlchemyUnitOfWork(sessions), faults)
    consumer = Consumer(settings, pipeline, publisher, faults, redact)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    heartbeat = asyncio.create_task(_heartbeat(settings.health_file, connection))
    await consumer.start(queue, consume_channel)
    log.info(
        "worker_ready",
        queue=topology.worker_queue,
        broker=redact_url(settings.amqp_url.get_secret_value()),
        database=redact_url(settings.database_url.get_secret_value()),
        prefetch=settings.prefetch,
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
    )
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(consumer.wait_failed())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    started = time.monotonic()
    log.info("worker_stopping", grace_period=settings.grace_period)
    returned = await consumer.stop(settings.grace_period)
    heartbeat.cancel()
    for task in (stopped, failed):
        task.cancel()
    if settings.health_file is not None:
        settings.health_file.unlink(missing_ok=True)
    log.info("worker_stopped", returned=returned, seconds=round(time.monotonic() - started, 2))
    if failed.done() and not stop.is_set():
        # The dispatcher ended on its own: a bug. Exit non-zero so that a supervisor restarts
        # the worker; its unsettled commands were returned above, or are redelivered.
        cause = None if failed.cancelled() else failed.exception()
        raise RuntimeError("the dispatcher stopped unexpectedly") from cause
    return 0


async def _heartbeat(health_file: Path | None, connection: AbstractRobustConnection) -> None:
    if health_file is None:
        return
    while True:
        if not connection.is_closed:
            await asyncio.to_thread(health_file.touch)
        await asyncio.sleep(5)
