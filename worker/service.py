"""The composition root of `coupon-worker run`: settings → engine, connection → consumer."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.names import Topology
from worker.db import schema
from worker.db.engine import create_engine, create_session_factory
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.errors import describe_startup_failure
from worker.faults import FaultPlan
from worker.keepalive import TcpKeepalive
from worker.messaging import topology as broker_topology
from worker.messaging.consumer import Consumer
from worker.messaging.publisher import Publisher
from worker.messaging.transport import KeepaliveRobustConnection, KeepaliveTransportFactory
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
    # Silent broker: the heartbeat (in the URL, where aiormq reads it) ends a connection after
    # 3 x (heartbeat + 1) s without a frame; a reconnect attempt into a black hole gives up after
    # the connect timeout, and the next starts a second later (no growing back-off), so the
    # worker is back within about connect timeout + 1 s of the broker answering again.
    connection = await aio_pika.connect_robust(
        settings.broker_url(),
        ssl_context=ssl_context(settings),
        client_properties={"connection_name": name},
        timeout=settings.amqp_connect_timeout,
        reconnect_interval=1,
        connection_class=KeepaliveRobustConnection,
        transport_factory=KeepaliveTransportFactory(TcpKeepalive(settings.tcp_keepalive)),
    )
    link = _BrokerLink()
    connection.close_callbacks.add(link.lost)
    connection.reconnect_callbacks.add(link.reconnected)
    return connection


class _BrokerLink:
    """Logs `broker_connection_lost` once per loss and `broker_reconnected` once per return;
    aio-pika calls the close callbacks for every failed reconnect attempt as well."""

    def __init__(self) -> None:
        self.up = True

    def lost(self, connection: object, error: BaseException | None) -> None:
        if getattr(connection, "close_called", False) or error is None:
            return  # a close we asked for
        if not self.up:
            log.info("broker_reconnect_failed", error=repr(error))
            return
        self.up = False
        # aiormq cancels its reader when no frame arrived within 3 x (heartbeat + 1) s.
        silent = isinstance(error, asyncio.CancelledError)
        log.warning(
            "broker_connection_lost",
            error="no frame within the heartbeat timeout" if silent else repr(error),
        )

    def reconnected(self, _: object) -> None:
        self.up = True
        log.info("broker_reconnected")


@contextlib.asynccontextmanager
async def database(settings: Settings, *, admin: bool = False) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings, admin=admin)
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
            if migrate:  # on an engine of its own: no statement timeout (the lock may wait)
                async with database(settings, admin=True) as admin:
                    migration = await schema.upgrade(admin)
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
