"""The real backend: RabbitMQ, PostgreSQL and a `coupon-worker run` process of the test's own.

`start()` creates a database of its own (`coupon_plugin_<hex>`) on the PostgreSQL server that
`COUPON_DATABASE_URL` (or `DATABASE_URL`) names, starts `coupon-worker run --migrate` on it under
a broker name prefix of its own, and waits for `worker_ready`; `aclose()` stops the worker
(SIGTERM, then SIGKILL), deletes its exchanges and queues and drops the database. `attach()`
uses a worker that is already running (`COUPON_WORKER_PREFIX`) and leaves it alone.

This backend needs the coupon-worker distribution (it brings asyncpg, and the command); the
in-memory backend does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aio_pika

from contracts.client import AmqpCouponClient

READY_WITHIN = 90.0
STOP_WITHIN = 30.0


@dataclass(frozen=True)
class RealSettings:
    amqp_url: str
    database_url: str | None  # an admin URL (postgresql+asyncpg://...) on the server to use
    worker_prefix: str | None  # attach to this running worker instead of starting one
    worker_command: list[str]

    @classmethod
    def from_environment(cls) -> RealSettings:
        env = os.environ
        command = env.get("COUPON_WORKER_COMMAND")
        return cls(
            amqp_url=env.get("COUPON_AMQP_URL")
            or env.get("AMQP_URL")
            or "amqp://guest:guest@localhost:5672/",
            database_url=env.get("COUPON_DATABASE_URL") or env.get("DATABASE_URL"),
            worker_prefix=env.get("COUPON_WORKER_PREFIX"),
            worker_command=command.split() if command else default_worker_command(),
        )


def default_worker_command() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "coupon-worker")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("coupon-worker")
    return [found] if found else [sys.executable, "-m", "worker"]


def _database_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


class WorkerProcess:
    def __init__(self, settings: RealSettings) -> None:
        self.settings = settings
        self.prefix = f"cpt{uuid.uuid4().hex[:10]}-"
        self.database: str | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.settings.database_url:
            raise RuntimeError(
                "the real coupon backend needs a PostgreSQL server: set COUPON_DATABASE_URL "
                "(or DATABASE_URL), e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
            )
        # The worker's dependency: the real backend needs the worker installed anyway.
        import asyncpg

        name = f"coupon_plugin_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(_asyncpg_url(self.settings.database_url))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')  # a generated, quoted identifier
        finally:
            await admin.close()
        self.database = name
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "PYTEST_"))}
        env.update(
            AMQP_URL=self.settings.amqp_url,
            DATABASE_URL=_database_url(self.settings.database_url, name),
            WORKER_NAME_PREFIX=self.prefix,
            WORKER_LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
        )
        self.process = await asyncio.create_subprocess_exec(
            *self.settings.worker_command,
            "run",
            "--migrate",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await self._wait_ready()

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace").rstrip())

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_WITHIN
        while not any(_event(line) == "worker_ready" for line in self.lines):
            assert self.process is not None
            if self.process.returncode is not None or loop.time() > deadline:
                output = "\n".join(self.lines[-40:])
                raise RuntimeError(f"coupon-worker did not get ready:\n{output}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_WITHIN)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._delete_topology()
        await self._drop_database()

    async def _delete_topology(self) -> None:
        connection = await aio_pika.connect(self.settings.amqp_url)
        try:
            channel = await connection.channel()
            for queue in ("coupon.worker", "coupon.worker.dead"):
                await channel.queue_delete(self.prefix + queue)
            for exchange in ("coupon.commands", "coupon.events", "coupon.dead"):
                await channel.exchange_delete(self.prefix + exchange)
        finally:
            await connection.close()

    async def _drop_database(self) -> None:
        if self.database is None or not self.settings.database_url:
            return
        import asyncpg

        admin = await asyncpg.connect(_asyncpg_url(self.settings.database_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await admin.close()


def _event(line: str) -> str | None:
    with contextlib.suppress(ValueError, AttributeError):
        record = json.loads(line)
        return str(record.get("event")) if isinstance(record, dict) else None
    return None


async def connect_client(settings: RealSettings, prefix: str) -> AmqpCouponClient:
    """A client of the worker under `prefix`."""
    return await AmqpCouponClient.connect(settings.amqp_url, prefix)
