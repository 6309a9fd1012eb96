"""A TCP proxy, in the test's event loop, that can make its peer go silent without closing anything.

Stopping a service closes its sockets, and the worker sees a FIN or a RST at once. A partition, a
dropped conntrack entry or a frozen VM closes nothing. `blackhole()` imitates that, mid-stream:

- every live connection's side toward the server is closed (the server sees its client go, as
  it would once its own timeouts fire), while the side toward the worker stays open and mute:
  nothing is read from it any more and nothing is written to it, ever;
- connections accepted while the black hole lasts are held the same way (a connect that
  completes and then never hears back, like a SYN into a partition that is later answered);
- `restore()` forwards NEW connections normally again; the muted ones stay mute until
  `close()`, so the worker must notice by itself that they are dead.

    proxy = BlackholeProxy.to(services.amqp_url)
    await proxy.start()
    worker = start_worker(amqp_url=proxy.through(services.amqp_url))
    proxy.blackhole(); ...; proxy.restore()
    await proxy.close()

The kernel still acknowledges what the worker sends to a muted socket (until the proxy's
buffers fill), so TCP keepalive cannot detect this black hole; only the worker's
application-level bounds (AMQP heartbeat, statement timeouts) can. That is the harder case.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "postgresql": 5432, "postgresql+asyncpg": 5432}
CHUNK = 64 * 1024


@dataclass(eq=False)
class _Link:
    """One proxied connection: the worker's side and, while forwarding, the server's side."""

    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    server_writer: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    muted: bool = False


class BlackholeProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = 0
        self.forwarded = 0  # connections forwarded to the server
        self.swallowed = 0  # connections accepted while the black hole lasted
        self.silenced = 0  # live connections turned mute by `blackhole()`
        self._dark = False
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    @classmethod
    def to(cls, url: str) -> Self:
        """A proxy to the host and port of a service URL."""
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"no host in {url.split('@')[-1]}")
        return cls(parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme])

    def through(self, url: str) -> str:
        """The same URL (credentials, path, query), pointing at this proxy."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{self.listen_host}:{self.port}"))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def dark(self) -> bool:
        return self._dark

    def blackhole(self) -> None:
        """From now on the server is out of reach: live connections go mute, new ones too."""
        self._dark = True
        for link in list(self._links):
            if not link.muted:
                self._mute(link)
                self.silenced += 1

    def restore(self) -> None:
        """Forward new connections again (the muted ones stay mute)."""
        self._dark = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        links, self._links = list(self._links), set()
        for link in links:
            for pump in link.pumps:
                pump.cancel()
        await asyncio.gather(*(p for link in links for p in link.pumps), return_exceptions=True)
        for link in links:
            for writer in (link.client_writer, link.server_writer):
                if writer is not None:
                    writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # --- inside -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(reader, writer)
        self._links.add(link)
        if self._dark:
            link.muted = True
            self.swallowed += 1
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            self._links.discard(link)
            writer.transport.abort()  # like a refused connection
            return
        if self._dark:  # the black hole began while connecting
            server_writer.transport.abort()
            link.muted = True
            self.swallowed += 1
            return
        self.forwarded += 1
        link.server_writer = server_writer
        link.pumps = [
            asyncio.create_task(self._pump(link, reader, server_writer)),
            asyncio.create_task(self._pump(link, server_reader, writer)),
        ]

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
        if not link.muted:  # one side closed by itself: pass it on (after what is buffered)
            self._links.discard(link)
            for writer in (link.client_writer, link.server_writer):
                if writer is not None:
                    writer.close()

    def _mute(self, link: _Link) -> None:
        link.muted = True
        for pump in link.pumps:
            pump.cancel()
        if link.server_writer is not None:
            link.server_writer.close()  # the server sees its client go; the worker sees nothing
