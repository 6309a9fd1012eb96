"""Service control for the fault tests: stop RabbitMQ's app or PostgreSQL, close connections,
raise RabbitMQ's resource alarms.

Only for a broker and a database installed on this machine (`rabbitmqctl`, `pg_ctlcluster`,
URLs pointing at localhost); anywhere else the test fails with a clear message, never skips -
except against the containers of a machine with only Docker (tests/support/services.py), where
it is skipped with that reason.

Every outage is undone in a `finally`, and the service is then checked to answer again (a real
AMQP connection, a `SELECT 1`, a confirmed publish after an alarm) within a bounded wait. CI and
other sessions share these services, so a service must never be left down or in alarm: besides
the `finally`, `restore_all()` (which the disruptive test modules call from a fixture's
teardown, and which runs `atexit`) restarts anything a cancelled or timed-out test left stopped
and puts back a watermark or disk limit it left lowered.

Callers are marked `disruptive`: `tests/conftest.py` then holds the machine's service lock
exclusively for them, so no other test (of this run or of another on this machine) is running.
Every helper here that disrupts a service checks that it does (`require_exclusive`), so an
unmarked caller fails instead of pulling a service from under a concurrent run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aio_pika
import psutil
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.support.service_lock import require_exclusive
from tests.support.services import started_in_a_container

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
COMMAND_TIMEOUT = 90.0
ANSWER_TIMEOUT = 90.0
# An alarm is raised by a setting that every node check trips at once (the memory monitor and
# the disk monitor both re-check when their limit is set: about a second here, CLI start
# included); the bound is for a loaded machine, not a slow monitor.
ALARM_TIMEOUT = 60.0

# Restarts (and settings put back) still owed by an outage in progress, so that `restore_all`
# can settle them.
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
    default_port = 5672 if url.startswith("amqp") else 5432
    if started_in_a_container(url.replace("+asyncpg", ""), default_port):
        # The one case the issue allows a skip for (issue 23): a machine with only Docker.
        pytest.skip(
            f"this fault test controls {what} with `{tool}` on this machine; this run's "
            "services are testcontainers containers, which it does not drive"
        )
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
    if os.geteuid() != 0:
        pytest.fail(
            f"this fault test runs `{tool}` to control {what}, which needs root here (the "
            "Erlang cookie, the postgres user); run it as root (CI does)",
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


async def broker_answers(
    amqp_url: str, within: float = ANSWER_TIMEOUT, *, confirms_publish: bool = False
) -> float:
    """Wait until a real AMQP connection opens a channel (with `confirms_publish`, until a
    publish on it is confirmed too: no alarm blocks it any more); returns the seconds it took.
    The publish goes to the default exchange under a routing key no queue has: the broker
    confirms it and drops it, leaving nothing behind."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    last: BaseException | None = None
    while loop.time() - started < within:
        try:
            connection = await aio_pika.connect(
                amqp_url, timeout=5, client_properties={"connection_name": "fault-test probe"}
            )
            try:
                channel = await connection.channel(publisher_confirms=confirms_publish)
                if confirms_publish:
                    async with asyncio.timeout(5):
                        await channel.default_exchange.publish(
                            aio_pika.Message(b"answering?"), routing_key="fault-test-nowhere"
                        )
                await channel.close()
                return loop.time() - started
            finally:
                await connection.close()
        except Exception as error:
            last = error
            await asyncio.sleep(0.5)
    what = "confirm a publish" if confirms_publish else "answer"
    raise AssertionError(f"RabbitMQ does not {what} after {within}s: {last!r}")


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


# --- RabbitMQ resource alarms ----------------------------------------------------------------

# Settings no machine can meet: the memory alarm trips above a millionth of the RAM, the disk alarm
# when less than 100,000 GB are free.
MEMORY_ALARM_WATERMARK = "0.000001"
DISK_ALARM_LIMIT = "100000GB"


@dataclass
class Alarm:
    """What one resource alarm did, for the test's figures; times are time.monotonic()."""

    resource: str  # "memory" or "disk"
    restore_to: list[str]  # the rabbitmqctl arguments that put the broker's setting back
    raised_at: float = 0.0  # when the alarm's setting was issued
    in_effect_at: float = 0.0  # when the broker listed the alarm
    restored_at: float = 0.0  # when the saved setting was issued again
    cleared_at: float = 0.0  # when the broker's alarm list was first seen empty again
    publishing_at: float = 0.0  # when a fresh connection's publish was confirmed after that
    log: list[str] = field(default_factory=list)

    @property
    def took_effect_seconds(self) -> float:
        return round(self.in_effect_at - self.raised_at, 1)

    @property
    def held_seconds(self) -> float:
        """From the alarm in effect to the broker's alarm list empty again."""
        return round(self.cleared_at - self.in_effect_at, 1)

    @property
    def clear_seconds(self) -> float:
        """From the saved setting issued again to the alarm list empty."""
        return round(self.cleared_at - self.restored_at, 1)


async def _rabbit_eval(expression: str) -> str:
    return await _run("rabbitmqctl", "eval", expression)


def _memory_setting(printed: str) -> list[str]:
    """`set_vm_memory_high_watermark` arguments that restore what
    `vm_memory_monitor:get_vm_memory_high_watermark()` printed: a fraction (`0.4`, `1.0e-6`) or
    `{absolute,Bytes}` (bytes as a number, or as the string it was configured with)."""
    text_value = printed.strip()
    absolute = re.fullmatch(r'\{absolute,\s*"?([0-9A-Za-z.]+)"?\}', text_value)
    if absolute:
        return ["set_vm_memory_high_watermark", "absolute", absolute.group(1)]
    try:
        fraction = float(text_value)
    except ValueError:
        raise AssertionError(
            f"unexpected memory high watermark from the broker: {printed!r}"
        ) from None
    return ["set_vm_memory_high_watermark", repr(fraction)]


def _disk_setting(printed: str) -> list[str]:
    """`set_disk_free_limit` arguments that restore what
    `rabbit_disk_monitor:get_disk_free_limit()` printed: the limit in bytes (a relative limit
    is reported already worked out into bytes, and restored as those bytes)."""
    text_value = printed.strip()
    if not re.fullmatch(r"[0-9]+", text_value):
        raise AssertionError(
            f"unexpected disk free limit from the broker: {printed!r} (is the disk monitor "
            "running on this platform?)"
        )
    return ["set_disk_free_limit", text_value]


async def _alarms_listed() -> str:
    """The broker's resource alarms, as `rabbit_alarm:get_alarms()` prints them (`[]` if none),
    e.g. `[{{resource_limit,disk,rabbit@localhost},[]}]`."""
    return await _rabbit_eval("rabbit_alarm:get_alarms().")


async def _wait_alarms(resource: str, *, present: bool, within: float = ALARM_TIMEOUT) -> str:
    """Poll the alarm list until the `resource` alarm is listed (`present`) or no resource
    alarm at all is; returns the last listing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        listed = await _alarms_listed()
        done = (
            f"resource_limit,{resource}," in listed if present else "resource_limit" not in listed
        )
        if done:
            return listed
        if loop.time() > deadline:
            state = "not in effect" if present else "still listed"
            raise AssertionError(f"the {resource} alarm is {state} after {within}s: {listed}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _resource_alarm(
    amqp_url: str, resource: str, read: str, parse: Callable[[str], list[str]], raise_: list[str]
) -> AsyncIterator[Alarm]:
    _require_local(amqp_url, "rabbitmqctl", f"a RabbitMQ {resource} alarm")
    require_exclusive(f"raising a RabbitMQ {resource} alarm")
    listed = await _alarms_listed()
    if "resource_limit" in listed:
        pytest.fail(f"RabbitMQ is in alarm already, before the test raised one: {listed}")
    alarm = Alarm(resource, parse(await _rabbit_eval(read)))
    _owed[f"rabbitmq-{resource}-alarm"] = ["rabbitmqctl", *alarm.restore_to]
    try:
        alarm.raised_at = time.monotonic()
        alarm.log.append(await _run("rabbitmqctl", *raise_))
        alarm.log.append(await _wait_alarms(resource, present=True))
        alarm.in_effect_at = time.monotonic()
        yield alarm
    finally:
        alarm.restored_at = time.monotonic()
        alarm.log.append(await _run("rabbitmqctl", *alarm.restore_to))
        await _wait_alarms(resource, present=False)
        alarm.cleared_at = time.monotonic()
        await broker_answers(amqp_url, confirms_publish=True)
        alarm.publishing_at = time.monotonic()
        _owed.pop(f"rabbitmq-{resource}-alarm", None)


def memory_alarm(amqp_url: str) -> contextlib.AbstractAsyncContextManager[Alarm]:
    """A RabbitMQ memory alarm for the body of the `with` (the high watermark lowered to almost
    nothing); the watermark the broker had is put back after it, always, and the broker is
    seen out of alarm and confirming a publish again before the `with` ends.

    The body starts once the broker lists the alarm: from then on it blocks every connection
    that publishes (each is told `connection.blocked`), and reads nothing more from it until
    the alarm clears."""
    return _resource_alarm(
        amqp_url,
        "memory",
        "vm_memory_monitor:get_vm_memory_high_watermark().",
        _memory_setting,
        ["set_vm_memory_high_watermark", MEMORY_ALARM_WATERMARK],
    )


def disk_alarm(amqp_url: str) -> contextlib.AbstractAsyncContextManager[Alarm]:
    """A RabbitMQ disk alarm for the body of the `with` (a free-disk limit of 100,000 GB); the
    limit the broker had is put back after it, always, as `memory_alarm` does its watermark.

    The disk monitor re-checks when its limit is set, so the alarm is usually listed about a
    second later; the body waits until it is, whatever the monitor's interval."""
    return _resource_alarm(
        amqp_url,
        "disk",
        "rabbit_disk_monitor:get_disk_free_limit().",
        _disk_setting,
        ["set_disk_free_limit", DISK_ALARM_LIMIT],
    )


# --- one client connection --------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConnection:
    """One client connection as `rabbitmqctl list_connections` shows it."""

    pid: str  # the connection process, as close_connection takes it: <rabbit@host.1.2.0>
    peer_port: int  # the client's local port
    name: str  # its client-provided `connection_name` ("" without one)


async def client_connections() -> list[ClientConnection]:
    """Every client connection of the local node, with its client-provided name."""
    table = await _run(
        "rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "peer_port"
    )
    pids = {}
    for row in table.splitlines():
        columns = row.split()
        if len(columns) == 2 and columns[1].isdigit():
            pids[int(columns[1])] = columns[0]
    listed = await _run(
        "rabbitmqctl",
        "list_connections",
        "-q",
        "--formatter",
        "json",
        "peer_port",
        "client_properties",
    )
    found = []
    for entry in json.loads(listed or "[]"):
        name = ""
        for key, _type, value in entry.get("client_properties") or []:
            if key == "connection_name":
                name = str(value)
        port = int(entry["peer_port"])
        if port in pids:  # else it closed between the two listings
            found.append(ClientConnection(pids[port], port, name))
    return found


def _local_ports(process_id: int) -> set[int]:
    """The local TCP ports of a process's connections (the peer ports the broker sees)."""
    return {
        connection.laddr.port
        for connection in psutil.Process(process_id).net_connections(kind="tcp")
        if connection.raddr
    }


async def close_client_connection(
    amqp_url: str,
    names: tuple[str, ...],
    *,
    owner: int | None = None,
    reason: str = "closed by a fault test",
) -> ClientConnection:
    """`rabbitmqctl close_connection` on the one client connection named by the first of
    `names` that the broker lists (the broker stays up, every other connection stays open).

    `owner`, a process id, narrows the choice to that process's connections (several workers,
    of other test runs too, share a name): closing a connection of the test's own worker
    disturbs nobody else, so only a close without an `owner` needs the exclusive service lock.
    Fails, listing what is there, if no connection has any of the names, or if more than one
    has the first name found."""
    _require_local(amqp_url, "rabbitmqctl", "RabbitMQ connections")
    if owner is None:
        require_exclusive("closing a RabbitMQ connection of any process")
    connections = await client_connections()
    if owner is not None:
        ports = _local_ports(owner)
        connections = [c for c in connections if c.peer_port in ports]
    for name in names:
        named = [c for c in connections if c.name == name]
        if len(named) > 1:
            raise AssertionError(f"{len(named)} connections are named {name!r}: {named}")
        if named:
            await _run("rabbitmqctl", "close_connection", named[0].pid, reason)
            return named[0]
    whose = f" of process {owner}" if owner is not None else ""
    raise AssertionError(
        f"no connection{whose} is named any of {list(names)}; the broker lists "
        f"{[c.name for c in connections]}"
    )


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
    """Synchronously restart whatever an interrupted outage left stopped, and put back a
    watermark or disk limit an interrupted alarm left lowered; returns what it did.

    For fixture teardowns and `atexit`: it works even when the event loop that ran the outage
    was torn down by a timeout."""
    done = []
    for service, argv in list(_owed.items()):
        if service == "rabbitmq" and subprocess.run(argv, timeout=COMMAND_TIMEOUT).returncode:
            subprocess.run(["rabbitmq-server", "-detached"], timeout=COMMAND_TIMEOUT)
        elif service != "rabbitmq":
            subprocess.run(argv, timeout=COMMAND_TIMEOUT)
        if service.endswith("-alarm"):
            _alarm_cleared_sync()
        _owed.pop(service, None)
        done.append(" ".join(argv))
    return done


def _alarm_cleared_sync(within: float = ALARM_TIMEOUT) -> None:
    """Poll until the broker lists no resource alarm (the next session must not start in one);
    gives up quietly after `within`: this runs at teardown and exit, where raising helps no one."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["rabbitmqctl", "eval", "rabbit_alarm:get_alarms()."],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        ).stdout
        if "resource_limit" not in listed:
            return
        time.sleep(0.2)


atexit.register(restore_all)
