"""Broker connections: TLS when configured, an AMQP heartbeat and TCP keepalive (a silent broker
is given up within seconds), the health file, and the one translation of aiormq's cancellations
into broker failures.

`connect_broker` is a robust connection (it reconnects by itself, to the next node when AMQP_URL
names several: `worker.messaging.failover`), for the CLI's commands and test clients. The worker
itself runs on plain links that its supervisor replaces (`worker.messaging.link`, `.supervisor`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aio_pika.abc import AbstractRobustConnection

from worker.messaging.failover import connect_any
from worker.settings import Settings

log = structlog.stdlib.get_logger(__name__)

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
    # Silent broker: the heartbeat (in each URL, where aiormq reads it) ends a connection after
    # 3 x (heartbeat + 1) s without a frame; a reconnect attempt into a black hole gives up after
    # the connect timeout, and the next starts a second later (no growing back-off) on the next
    # node, so the worker is back within about connect timeout + 1 s of a broker answering again.
    connection = await connect_any(
        settings.broker_urls(),  # one or several nodes, tried in turn (worker.messaging.failover)
        ssl_context=ssl_context(settings),
        client_properties={"connection_name": name},
        attempt_timeout=settings.amqp_connect_timeout,
        reconnect_interval=1,
        tcp_keepalive=settings.tcp_keepalive,
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


async def heartbeat(health_file: Path | None, liveness: Callable[[], str | None]) -> None:
    """Touch `health_file` while the worker is alive, as `/healthz` says (`liveness` is None):
    consuming, or waiting out an outage or an alarm that a restart would not end
    (`coupon-worker healthcheck` reads its age)."""
    if health_file is None:
        return
    while True:
        if liveness() is None:
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


async def time_limited(call: Awaitable[T], seconds: float) -> T:
    """`call`, or TimeoutError after `seconds` — without waiting for the abandoned call to
    finish cancelling (`asyncio.wait_for` does wait: an aiormq call queued behind a channel's
    pending RPC can take that long or longer, and a stop must end within its grace period)."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        # Abandoned: whatever it ends with is nobody's to read (no "never retrieved" warning).
        task.add_done_callback(_discard_outcome)
        task.cancel()
        raise TimeoutError(f"no answer from the broker within {seconds}s")
    return task.result()


def _discard_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
