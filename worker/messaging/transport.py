"""A robust broker connection whose sockets carry TCP keepalive.

Neither aio-pika nor aiormq sets socket options, but aiormq opens its sockets through a
`TransportFactory` that it takes as a keyword. aio-pika 10 writes every keyword of `connect_robust`
into the URL's query (an object cannot go there) and forwards to aiormq only the parameters a
connection class lists in `PARAMETERS`. So this class lists one more, `tcp_keepalive` (the idle
seconds, a plain number), and swaps it for a factory that sets keepalive on each socket it opens
(every reconnect opens a new one). The URL therefore shows `tcp_keepalive=N`; aiormq ignores it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika import Connection, RobustConnection
from aio_pika.abc import ConnectionParameter
from aiormq.connection import (
    TCPTransportFactory,
    TLSTransportFactory,
    TransportFactory,
    parse_int,
)
from yarl import URL

from worker.keepalive import TcpKeepalive


class KeepaliveTransportFactory(TransportFactory):
    """aiormq's own TCP or TLS factory (by the URL's scheme, as aiormq picks), then keepalive."""

    def __init__(self, keepalive: TcpKeepalive) -> None:
        self.keepalive = keepalive

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        inner = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        reader, writer = await inner.create(url, **kwargs)
        self.keepalive.apply(writer.get_extra_info("socket"))
        return reader, writer


KEEPALIVE_PARAMETER = ConnectionParameter(name="tcp_keepalive", parser=parse_int, default="0")


def _keepalive_transport(kwargs: dict[str, Any]) -> None:
    """Swap the `tcp_keepalive` parameter for a transport factory that applies it."""
    keepalive = TcpKeepalive(kwargs.pop("tcp_keepalive"))
    if keepalive.idle > 0:
        kwargs["transport_factory"] = KeepaliveTransportFactory(keepalive)


class KeepaliveRobustConnection(RobustConnection):
    """`aio_pika.connect_robust(..., connection_class=KeepaliveRobustConnection,
    tcp_keepalive=idle_seconds)`; 0 (the default) leaves the sockets as aiormq opens them. For
    the CLI's short-lived connections and test clients; the worker's own are plain
    (`KeepaliveConnection`, `worker.messaging.link`)."""

    PARAMETERS = (*RobustConnection.PARAMETERS, KEEPALIVE_PARAMETER)

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any):
        super().__init__(url, loop, **kwargs)
        _keepalive_transport(self.kwargs)


class KeepaliveConnection(Connection):
    """A plain connection (no reconnect of its own) whose sockets carry TCP keepalive."""

    PARAMETERS = (*Connection.PARAMETERS, KEEPALIVE_PARAMETER)

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any):
        super().__init__(url, loop, **kwargs)
        _keepalive_transport(self.kwargs)
