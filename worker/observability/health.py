"""`/healthz`, `/readyz` and `/metrics` over HTTP on one port (`WORKER_HTTP_PORT`).

The server runs in a thread of its own (the standard library's WSGI server, threaded, with
prometheus-client's WSGI exposition for `/metrics`) rather than on the event loop: it must answer
when the loop does not. `/healthz` asks the loop to run a no-op and waits for it, so a blocked
loop is reported as unhealthy with a 503 instead of as a probe timeout, and `/metrics` keeps
answering meanwhile. No web framework: three fixed paths need none.

- `/healthz`: 200 while the process is alive, its event loop runs callbacks within
  `LOOP_DEADLINE` seconds, and it has not been unable to consume for `WORKER_STUCK_LIMIT`
  seconds while the broker was usable (`Supervisor.liveness`; the worker exits then too). A
  PostgreSQL or RabbitMQ outage, or a broker's resource alarm, does not make it fail: the worker
  rides those out by itself, and restarting it would not help.
- `/readyz`: 200 while the broker connection is open, PostgreSQL answers `SELECT 1`, and the
  worker consumes its queue; 503 with the failing checks otherwise. The checks run on the loop
  every `CHECK_INTERVAL` seconds (a `ReadinessMonitor`); a result older than `STALE_AFTER` counts
  as not ready.

A little over 200 lines: the server, the checks it reports and the CLI's probe of it are one
piece, read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import make_wsgi_app

from worker.app.failures import OperatorError
from worker.observability.metrics import Metrics

log = structlog.stdlib.get_logger(__name__)

LOOP_DEADLINE: Final = 2.0
CHECK_INTERVAL: Final = 2.0
CHECK_TIMEOUT: Final = 3.0
DEAD_LETTERS_INTERVAL: Final = 15.0
STALE_AFTER: Final = 15.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class PortUnavailable(OperatorError):
    """WORKER_HTTP_HOST:WORKER_HTTP_PORT cannot be listened on (in use, not an address here)."""


@dataclass
class Readiness:
    broker: bool = False
    database: bool = False
    consuming: bool = False
    checked_at: float = field(default=0.0)  # time.monotonic()

    @property
    def ready(self) -> bool:
        fresh = time.monotonic() - self.checked_at < STALE_AFTER
        return fresh and self.broker and self.database and self.consuming


class ReadinessMonitor:
    """Runs the readiness checks on the event loop and keeps the last result, and the gauges."""

    def __init__(
        self,
        metrics: Metrics,
        broker: Callable[[], bool],
        database: Callable[[], Awaitable[object]],
        consuming: Callable[[], bool],
        dead_letters: Callable[[], Awaitable[int]],
    ) -> None:
        self._metrics = metrics
        self._broker = broker
        self._database = database
        self._consuming = consuming
        self._dead_letters = dead_letters
        self.readiness = Readiness()
        self._dead_letters_at = -DEAD_LETTERS_INTERVAL

    async def check(self) -> Readiness:
        broker = self._broker()
        database = await _succeeds(self._database())
        readiness = Readiness(broker, database, broker and self._consuming(), time.monotonic())
        self._metrics.broker_connected.set(readiness.broker)
        self._metrics.database_up.set(readiness.database)
        self._metrics.consuming.set(readiness.consuming)
        now = time.monotonic()
        if broker and now - self._dead_letters_at >= DEAD_LETTERS_INTERVAL:
            self._dead_letters_at = now
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CHECK_TIMEOUT):
                    self._metrics.dead_letter_queue.set(await self._dead_letters())
        self.readiness = readiness
        return readiness

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(CHECK_INTERVAL)


async def _succeeds(check: Awaitable[object]) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check
    except Exception:
        return False
    return True


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line each."""


Liveness = Callable[[], str | None]  # None while alive, else why not


def _always_alive() -> str | None:
    return None


class HealthServer:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        monitor: ReadinessMonitor,
        metrics: Metrics,
        liveness: Liveness = _always_alive,
    ) -> None:
        self._liveness = liveness
        self._loop = loop
        self._monitor = monitor
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> int:
        """Listen (port 0: any free one); returns the port."""
        server = make_server(host, port, self._app, _Server, _QuietHandler)
        assert isinstance(server, _Server)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        self._thread.start()
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            if not self._loop_responds():
                return _json(start_response, False, {"status": "loop_blocked"})
            stuck = self._liveness()
            if stuck is not None:
                return _json(start_response, False, {"status": "not_consuming", "detail": stuck})
            return _json(start_response, True, {"status": "ok"})
        if path == "/readyz":
            readiness = self._monitor.readiness
            status = "ready" if readiness.ready else "not_ready"
            checks = {k: v for k, v in asdict(readiness).items() if k != "checked_at"}
            age = round(time.monotonic() - readiness.checked_at, 1)
            return _json(
                start_response, readiness.ready, {"status": status, **checks, "age_seconds": age}
            )
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /healthz, /readyz or /metrics\n"]

    def _loop_responds(self) -> bool:
        answered = threading.Event()
        try:
            self._loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # the loop is closed
            return False
        return answered.wait(LOOP_DEADLINE)


def _json(start_response: StartResponse, ok: bool, body: dict[str, Any]) -> list[bytes]:
    start_response(
        "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")]
    )
    return [json.dumps(body).encode() + b"\n"]


@contextlib.asynccontextmanager
async def serving(
    host: str,
    port: int | None,
    monitor: ReadinessMonitor,
    metrics: Metrics,
    liveness: Liveness = _always_alive,
) -> AsyncIterator[int | None]:
    """Run the readiness checks, and the HTTP server when a port is set; yields its port."""
    checks = asyncio.create_task(monitor.run(), name="readiness")
    server: HealthServer | None = None
    try:
        if port is not None:
            server = HealthServer(asyncio.get_running_loop(), monitor, metrics, liveness)
            try:
                port = await asyncio.to_thread(server.start, host, port)
            except OSError as error:
                server = None
                raise PortUnavailable(
                    f"cannot serve /healthz, /readyz and /metrics on {host}:{port} "
                    f"({error.strerror or error}): choose another WORKER_HTTP_PORT or "
                    "WORKER_HTTP_HOST, or unset WORKER_HTTP_PORT"
                ) from None
            log.info("http_listening", host=host, port=port, paths="/healthz /readyz /metrics")
        yield port
    finally:
        checks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checks
        if server is not None:
            await asyncio.to_thread(server.stop)
