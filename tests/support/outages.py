"""Service control for the fault tests: stop RabbitMQ's app or PostgreSQL, close connections.

Only for a broker and a database installed on this machine (`rabbitmqctl`, `pg_ctlcluster`,
URLs pointing at localhost); anywhere else the test fails with a clear message, never skips.

Every outage is undone in a `finally`, and the service is then checked to answer again (a real
AMQP connection, a `SELECT 1`) within a bounded wait. CI and other sessions share these
services, so a service must never be left down: besides the `finally`, `restore_all()` (which
the disruptive test modules call from a fixture's teardown, and which runs `atexit`) restarts
anything a cancelled or timed-out test left stopped.

Callers are marked `disruptive`: `tests/conftest.py` then holds the machine's service lock
exclusively for them, so no other test (of this run or of another on this machine) is running.
Every helper here that disrupts a service checks that it does (`require_exclusive`), so an
unmarked caller fails instead of pulling a service from under a concurrent run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aio_pika
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.support.service_lock import require_exclusive

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
COMMAND_TIMEOUT = 90.0
ANSWER_TIMEOUT = 90.0

# Restarts still owed by an outage in progress, so that `restore_all` can settle them.
_owed: dict[str, list[str]] = {}


@dataclass
class Outage:
    """What one outage did, for the test's figures."""

    service: str
    stopped_at: float = 0.0  # time.monotonic()
    started_at: float = 0.0  # when the restart command was issued
    answering_at: float = 0.0  # when the service answered again
    log: list[str] = field(default_factory=list)

    @property
    def down_seconds(self) -> float:
        return round(self.answering_at - self.stopped_at, 1)


def _require_local(url: str, tool: str, what: str) -> None:
    host = urlsplit(url.replace("+asyncpg", "")).hostname or ""
    if host not in LOCAL_HOSTS:
        pytest.fail(
            f"this fault test stops {what}, which it can do only on this machine; "
            f"the URL points at {host!r}. Run it against local services.",
            pytrace=False,
        )
    if shutil.which(tool) is None:
        pytest.fail(
            f"this fault test needs `{tool}` to control {what}, and it is not installed here",
            pytrace=False,
        )


async def _run(*argv: str, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish within {COMMAND_TIMEOUT}s") from None
    text_out = output.decode(errors="replace").strip()
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({process.returncode}): {text_out}")
    return text_out


# --- RabbitMQ ---------------------------------------------------------------------------------


async def broker_answers(amqp_url: str, within: float = ANSWER_TIMEOUT) -> float:
    """Wait until a real AMQP connection opens a channel; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    last: BaseException | None = None
    while loop.time() - started < within:
        try:
            connection = await aio_pika.connect(amqp_url, timeout=5)
            try:
                channel = await connection.channel()
                await channel.close()
                return loop.time() - started
            finally:
                await connection.close()
        except Exception as error:
            last = error
            await asyncio.sleep(0.5)
    raise AssertionError(f"RabbitMQ does not answer after {within}s: {last!r}")


async def _start_rabbitmq_app() -> None:
    try:
        await _run("rabbitmqctl", "start_app")
    except AssertionError:
        # The node itself is down (not just its app): start it; `broker_answers` waits for it.
        await _run("rabbitmq-server", "-detached", check=False)


@contextlib.asynccontextmanager
async def rabbitmq_app_stopped(amqp_url: str) -> AsyncIterator[Outage]:
    """`rabbitmqctl stop_app` for the body of the `with`; `start_app` after it, always."""
    _require_local(amqp_url, "rabbitmqctl", "RabbitMQ")
    require_exclusive("stopping RabbitMQ")
    outage = Outage("rabbitmq")
    _owed["rabbitmq"] = ["rabbitmqctl", "start_app"]
    try:
        outage.stopped_at = time.monotonic()
        outage.log.append(await _run("rabbitmqctl", "stop_app"))
        yield outage
    finally:
        outage.started_at = time.monotonic()
        await _start_rabbitmq_app()
        await broker_answers(amqp_url)
        outage.answering_at = time.monotonic()
        _owed.pop("rabbitmq", None)


async def close_broker_connections(amqp_url: str, reason: str = "test") -> Outage:
    """`rabbitmqctl close_all_connections`: every client connection (the worker's and the
    test's own) is closed by the broker; the broker itself stays up."""
    _require_local(amqp_url, "rabbitmqctl", "RabbitMQ connections")
    require_exclusive("closing every RabbitMQ connection")
    outage = Outage("rabbitmq-connections", stopped_at=time.monotonic())
    outage.log.append(await _run("rabbitmqctl", "close_all_connections", reason))
    outage.started_at = time.monotonic()
    await broker_answers(amqp_url)
    outage.answering_at = time.monotonic()
    return outage


# --- PostgreSQL -------------------------------------------------------------------------------


async def database_answers(database_url: str, within: float = ANSWER_TIMEOUT) -> float:
    """Wait until `SELECT 1` succeeds on a new connection; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    last: BaseException | None = None
    while loop.time() - started < within:
        engine = create_async_engine(database_url, poolclass=NullPool, connect_args={"timeout": 5})
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return loop.time() - started
        except Exception as error:
            last = error
            await asyncio.sleep(0.5)
        finally:
            await engine.dispose()
    raise AssertionError(f"PostgreSQL does not answer after {within}s: {last!r}")


def _cluster_of(database_url: str) -> tuple[str, str]:
    """(version, name) of the local cluster listening on the URL's port."""
    port = str(make_url(database_url).port or 5432)
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for line in listing.splitlines():
        columns = line.split()
        if len(columns) >= 3 and columns[2] == port:
            return columns[0], columns[1]
    pytest.fail(f"no local PostgreSQL cluster listens on port {port}:\n{listing}", pytrace=False)


@contextlib.asynccontextmanager
async def postgres_stopped(database_url: str) -> AsyncIterator[Outage]:
    """`pg_ctlcluster … stop -m fast` for the body of the `with`; `start` after it, always."""
    _require_local(database_url, "pg_ctlcluster", "PostgreSQL")
    require_exclusive("stopping PostgreSQL")
    version, name = _cluster_of(database_url)
    control = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name]
    outage = Outage("postgresql")
    _owed["postgresql"] = [*control, "start"]
    try:
        outage.stopped_at = time.monotonic()
        outage.log.append(await _run(*control, "stop", "-m", "fast"))
        yield outage
    finally:
        outage.started_at = time.monotonic()
        await _run(*control, "start", check=False)  # "already running" is fine
        await database_answers(database_url)
        outage.answering_at = time.monotonic()
        _owed.pop("postgresql", None)


# --- the safety net ---------------------------------------------------------------------------


def restore_all() -> list[str]:
    """Synchronously restart whatever an interrupted outage left stopped; returns what it did.

    For fixture teardowns and `atexit`: it works even when the event loop that ran the outage
    was torn down by a timeout."""
    done = []
    for service, argv in list(_owed.items()):
        if service == "rabbitmq" and subprocess.run(argv, timeout=COMMAND_TIMEOUT).returncode:
            subprocess.run(["rabbitmq-server", "-detached"], timeout=COMMAND_TIMEOUT)
        elif service != "rabbitmq":
            subprocess.run(argv, timeout=COMMAND_TIMEOUT)
        _owed.pop(service, None)
        done.append(" ".join(argv))
    return done


atexit.register(restore_all)
