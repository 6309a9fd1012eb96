"""The broker connection: robust (reconnects by itself, to the next node when AMQP_URL names
several: `worker.messaging.failover`), TLS when configured, a heartbeat file while it is up,
and the one translation of aiormq's cancellations into broker failures."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import structlog
from aio_pika.abc import AbstractRobustConnection

from worker.messaging.failover import connect_any
from worker.settings import Settings

log = structlog.stdlib.get_logger("worker")

T = TypeVar("T")

HEARTBEAT_INTERVAL = 5.0  # seconds between touches of the health file


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


async def heartbeat(health_file: Path | None, connection: AbstractRobustConnection) -> None:
    """Touch `health_file` while the connection is up (`coupon-worker healthcheck` reads it)."""
    if health_file is None:
        return
    while True:
        if not connection.is_closed:
            await asyncio.to_thread(health_file.touch)
        await asyncio.sleep(HEARTBEAT_INTERVAL)


async def broker_call(call: Awaitable[T]) -> T:
    """Await a call to the broker, turning a CancelledError that does not cancel this task into
    a ConnectionError. aiormq cancels the pending futures of a channel that closed under them:
    that is a broker failure like any other, handled where broker failures are, and must not
    end the dispatcher or a batch. A cancellation of the task itself (a stop) propagates."""
    try:
        return await call
    except asyncio.CancelledError as error:
        task = asyncio.current_task()
        if task is None or task.cancelling() > 0:
            raise
        raise ConnectionError("the channel closed under a call to the broker") from error
