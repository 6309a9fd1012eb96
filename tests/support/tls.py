"""amqps:// in the tests without reconfiguring the shared broker: a throw-away CA and a server
certificate it signed (openssl), and a TLS listener in front of the plain AMQP port."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and an unrelated CA."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca_key", "other_ca", "other_key")}
    files |= {name: directory / f"{name}.pem" for name in ("server", "server_key", "csr")}
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        str(files["ca_key"]),
        "-out",
        str(files["ca"]),
        "-days",
        "2",
        "-subj",
        "/CN=coupon test CA",
    )
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        str(files["other_key"]),
        "-out",
        str(files["other_ca"]),
        "-days",
        "2",
        "-subj",
        "/CN=someone else's CA",
    )
    openssl(
        "req",
        *ec,
        "-keyout",
        str(files["server_key"]),
        "-out",
        str(files["csr"]),
        "-subj",
        "/CN=127.0.0.1",
    )
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(files["csr"]),
        "-CA",
        str(files["ca"]),
        "-CAkey",
        str(files["ca_key"]),
        "-CAcreateserial",
        "-out",
        str(files["server"]),
        "-days",
        "2",
        "-extfile",
        str(extensions),
    )
    return files


class TlsProxy:
    """A TLS listener in front of the plain AMQP port (the shared broker is not reconfigured):
    what a TLS-terminating load balancer does."""

    def __init__(self, certificate: Path, key: Path, host: str, port: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(certificate), str(key))
        self.target = (host, port)
        self.handshakes = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.close()
