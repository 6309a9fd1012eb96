"""A robust broker connection whose sockets carry TCP keepalive.

Neither aio-pika nor aiormq sets socket options, but aiormq opens its sockets through a
`TransportFactory` that it takes as a keyword. aio-pika forwards to aiormq only the keywords
listed in a connection class's `PARAMETERS`, so this connection class lists one more, and the
factory sets keepalive on each socket it opens (every reconnect opens a new one).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika import RobustConnection
from aio_pika.abc import ConnectionParameter
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
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


def _factory(value: Any) -> Any:
    if not isinstance(value, TransportFactory):
        raise ValueError("transport_factory must be an aiormq TransportFactory")
    return value


class KeepaliveRobustConnection(RobustConnection):
    """`aio_pika.connect_robust(..., connection_class=KeepaliveRobustConnection,
    transport_factory=KeepaliveTransportFactory(keepalive))`."""

    PARAMETERS = (
        *RobustConnection.PARAMETERS,
        ConnectionParameter(name="transport_factory", parser=_factory, is_kwarg=True),
    )
