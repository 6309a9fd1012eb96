"""The loopback RabbitMQ cluster and PostgreSQL standby of the cluster fault tests.

Both are driven through the project's scripts (`scripts/rabbit-cluster`, `scripts/pg-standby`),
so that the tests exercise what an engineer runs by hand. Each call is bounded; a failing script
fails the test with its output.

- `RabbitCluster`: three extra nodes c1..c3@localhost (AMQP 5681-5683); the machine's own node
  on 5672 is never touched. `in_use()` holds a machine-wide lock for as long as a test module
  uses the cluster, so that two test runs never stop each other's nodes.
- `PgStandby`: a standby of the default cluster on 5433. Its failover tests stop the DEFAULT
  cluster (5432) and promote the standby; `down()` then discards the standby and starts 5432
  again as the primary it was, with its configuration and slots as before `up()`.
- `ClusterBroker`: the tests' `Broker`, connected through the same address rotation as the
  worker, with quorum collector queues, so that it rides through the loss of any one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.broker import Broker
from worker.messaging.failover import connect_any

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SCRIPT_TIMEOUT = 240.0
CLUSTER_IN_USE_LOCK = "/var/tmp/coupon-rabbit-cluster.in-use"


async def run_script(*argv: str, within: float = SCRIPT_TIMEOUT) -> str:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPTS / argv[0]), *argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(within):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish within {within}s") from None
    text = output.decode(errors="replace").strip()
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({process.returncode}):\n{text}")
    return text


def run_script_sync(*argv: str, timeout: float = SCRIPT_TIMEOUT) -> str:
    """For fixture teardowns, which may run after the test's event loop is gone."""
    done = subprocess.run(
        [str(SCRIPTS / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{text}")
    return text


def require_root() -> None:
    import os

    if os.geteuid() != 0:
        pytest.fail(
            "the cluster fault tests start RabbitMQ nodes as the rabbitmq user and a standby "
            "as the postgres user; run them as root (CI does)",
            pytrace=False,
        )


# --- RabbitMQ -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RabbitCluster:
    urls: tuple[str, ...]  # c1, c2, c3

    NODES = ("c1", "c2", "c3")

    @staticmethod
    @contextlib.contextmanager
    def in_use() -> Iterator[RabbitCluster]:
        """Up for the body of the `with` (one user at a time on this machine), down after."""
        require_root()
        with open(CLUSTER_IN_USE_LOCK, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                run_script_sync("rabbit-cluster", "up")
                urls = run_script_sync("rabbit-cluster", "urls").split(",")
                yield RabbitCluster(tuple(urls))
            finally:
                run_script_sync("rabbit-cluster", "down")
                fcntl.flock(lock, fcntl.LOCK_UN)

    def url_of(self, node: str) -> str:
        return self.urls[self.NODES.index(node)]

    def node_of(self, address: str) -> str:
        """Which node an address (a URL or a redacted URL) points at, by its port."""
        port = urlsplit(address).port
        for node, url in zip(self.NODES, self.urls, strict=True):
            if urlsplit(url).port == port:
                return node
        raise AssertionError(f"{address} is not a node of the cluster")

    def starting_at(self, node: str) -> list[str]:
        """The three URLs, `node`'s first: the order a client tries them in."""
        start = self.NODES.index(node)
        return [*self.urls[start:], *self.urls[:start]]

    async def stop_node(self, node: str) -> None:
        await run_script("rabbit-cluster", "stop-node", node)

    async def restore(self) -> None:
        """Every node running and clustered again (a stopped node rejoins with its data)."""
        await run_script("rabbit-cluster", "up")

    async def ctl(self, node: str, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-n",
            f"{node}@localhost",
            *args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            output, errors = await process.communicate()
        if process.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)}: {errors.decode()}")
        return output.decode()

    async def leader_of(self, queue: str, ask: str) -> str:
        """The node leading the quorum queue `queue` (asked of node `ask`)."""
        listing = json.loads(
            await self.ctl(ask, "list_queues", "name", "leader", "--formatter", "json")
        )
        for row in listing:
            if row.get("name") == queue:
                return str(row["leader"]).split("@", 1)[0]
        raise AssertionError(f"no queue {queue} in {listing}")


class ClusterBroker(Broker):
    """The tests' client on the cluster: robust over `urls` (first one first), and its event
    collectors are quorum queues, which lose nothing when one node stops."""

    def __init__(self, urls: Sequence[str], prefix: str) -> None:
        super().__init__(urls[0], prefix, robust=True)
        self.urls = list(urls)
        self.collector_arguments = {"x-queue-type": "quorum"}

    async def open(self) -> None:
        self.connection = await connect_any(self.urls, attempt_timeout=10, reconnect_interval=1)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)


# --- PostgreSQL ---------------------------------------------------------------------------


class PgStandby:
    """`scripts/pg-standby`, for one test: `up()` in the fixture, `down()` in its teardown."""

    PORT = 5433

    async def up(self) -> None:
        require_root()
        await run_script("pg-standby", "up")

    async def mode(self, synchronous: bool) -> None:
        await run_script("pg-standby", "sync" if synchronous else "async")

    async def promote(self) -> None:
        await run_script("pg-standby", "promote")

    async def detach(self) -> None:
        """Cut the standby off its primary, as a network partition would: it keeps (and
        will be promoted with) what it has received so far, nothing more."""
        await self.psql(
            "ALTER SYSTEM SET primary_conninfo = ''",
            "SELECT pg_reload_conf()",
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await self.psql("SELECT count(*) FROM pg_stat_wal_receiver") != "0":
            assert loop.time() < deadline, "the standby's WAL receiver did not stop"
            await asyncio.sleep(0.2)

    async def psql(self, *statements: str) -> str:
        argv = ["psql", "-X", "-h", "127.0.0.1", "-p", str(self.PORT), "-U", "postgres"]
        argv += ["-d", "postgres", "-Atq"]
        for statement in statements:
            argv += ["-c", statement]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        async with asyncio.timeout(30):
            output, _ = await process.communicate()
        text = output.decode().strip()
        if process.returncode != 0:
            raise AssertionError(f"psql on {self.PORT}: {text}")
        return text

    @staticmethod
    def down() -> str:
        """Synchronous, for teardowns: the standby gone, 5432 a running primary as before."""
        return run_script_sync("pg-standby", "down")
