"""The worker's broker connection on RabbitMQ: the heartbeat it asks for, and TCP keepalive on
its socket (aio-pika 10 takes no object through `connect_robust`: see messaging/transport.py).

aiormq keeps its socket to itself, so the test looks among this process's open sockets for the
TCP ones connected to the broker's port."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import closing

import aiormq
import pytest
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from worker.messaging.connection import connect_broker
from worker.messaging.link import open_link
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


def tcp_sockets_to(port: int) -> Iterator[socket.socket]:
    """Duplicates of this process's TCP sockets connected to `port` (the caller closes them)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.fromfd(int(name), socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue  # not a socket
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                yield sock
                continue
        except (OSError, IndexError, TypeError):
            pass
        sock.close()


def keepalive_of(port: int) -> list[tuple[int, int]]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE) of each socket of this process connected to `port`."""
    found = []
    for sock in tcp_sockets_to(port):
        with closing(sock):
            found.append(
                (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                )
            )
    return found


async def test_the_connection_asks_for_the_heartbeat_and_sets_keepalive(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"tcp_keepalive": 7, "amqp_heartbeat": 6})
    port = URL(settings.amqp_url.get_secret_value()).port or 5672
    connection: AbstractRobustConnection = await connect_broker(settings, name="keepalive-test")
    try:
        assert connection.transport is not None
        underlay = connection.transport.connection
        assert isinstance(underlay, aiormq.Connection)
        assert underlay.heartbeat_timeout == 6
        found = keepalive_of(port)
        assert (1, 7) in found, found  # no other connection of this process uses 7 s
    finally:
        await connection.close()


async def test_the_worker_links_ask_for_the_heartbeat_and_set_keepalive(
    settings: Settings,
) -> None:
    """The same for the worker's own connections, the plain links its supervisor opens
    (worker/messaging/link.py), named by their role."""
    settings = settings.model_copy(update={"tcp_keepalive": 9, "amqp_heartbeat": 6})
    port = URL(settings.amqp_url.get_secret_value()).port or 5672
    link = await open_link(
        settings.broker_urls(), "publish", attempt_timeout=5, tcp_keepalive=settings.tcp_keepalive
    )
    try:
        assert link.connection.transport is not None
        underlay = link.connection.transport.connection
        assert isinstance(underlay, aiormq.Connection)
        assert underlay.heartbeat_timeout == 6
        found = keepalive_of(port)
        assert (1, 9) in found, found  # no other connection of this process uses 9 s
    finally:
        await link.close()
