"""Past one machine: a node of a three-node RabbitMQ cluster, or the PostgreSQL primary, is lost
mid-stream, and the worker carries on elsewhere - 0 lost, 0 doubled.

The RabbitMQ cluster (`scripts/rabbit-cluster`: c1..c3@localhost on 5681-5683, next to the
machine's own node, which these tests never touch) is brought up once for the module and torn
down after it. The worker's queue is a quorum queue with a member on each node.

The PostgreSQL tests are DISRUPTIVE: they stop the machine's default cluster (5432). Each one
makes a fresh standby on 5433 (`scripts/pg-standby up`: pg_basebackup, a replication slot,
streaming), stops 5432 mid-stream, promotes the standby, checks the ledger on it, and then
discards it: `pg-standby down` starts 5432 again as the primary it was, with its config, slots
and pg_hba as before. What the worker wrote to the promoted standby is thrown away with it (it
was the test's own throw-away database). So the default cluster ends every test as it began:
a running primary with all its data.

Timing (2 loaded cores): the module takes ~6 minutes, most of it starting nodes, taking base
backups and restarting PostgreSQL; `make test-cluster` runs it alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import make_url, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.cluster import ClusterBroker, PgStandby, RabbitCluster
from tests.support.ledger import Expect, Ledger, SteadyFlow
from tests.support.outages import _cluster_of, database_answers, restore_all
from tests.support.worker_process import WorkerProcess
from worker.db import tables
from worker.settings import Settings

pytestmark = [
    pytest.mark.faults,
    pytest.mark.cluster,
    pytest.mark.timeout(int(os.environ.get("CLUSTER_TEST_TIMEOUT", "420"))),
    # aiormq leaves the socket writer of a connection whose node went away to the garbage
    # collector (the test's client, not the worker): not a finding of this test.
    pytest.mark.filterwarnings("ignore:unclosed <StreamWriter:ResourceWarning"),
]

RESUME_LIMIT = 30.0  # contract: the worker resumes on its own within 30 s
SHARED_CODE = "cluster-shared"
SHARED_COUNT = 100_000
BURST = 8
FLOW_BEFORE = 2.0  # seconds of flow before the fault, and after the worker resumed
LAG_WINDOW = 3.0  # seconds the standby is cut off before the primary is lost
# A failover interrupts publishes (`publish_failed`: the batch is redelivered); it must never
# send a command to the dead letters.
NOT_AN_OUTCOME_OF_FAILOVER = ("command_dead_lettered", "dead_letter_failed")


def flow_commands(count: int) -> Command:
    if count % 3 == 0:
        return CreateCoupon(code=f"cluster-{count}", init_count=2)
    if count % 17 == 0:
        return RedeemCoupon(code=f"cluster-unknown-{count}")
    return RedeemCoupon(code=SHARED_CODE)


# --- RabbitMQ: one node of three lost -------------------------------------------------------


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    with RabbitCluster.in_use() as cluster:
        yield cluster


@pytest.fixture
async def cluster_broker(
    rabbit_cluster: RabbitCluster, prefix: str, settings: Settings
) -> AsyncIterator[ClusterBroker]:
    # The topology is declared through c1, so that c1 leads the worker's quorum queue (the
    # default leader locator is the declaring client's node); the test's client then works
    # through c3, so that the node a test stops is never the client's (the client would ride
    # through it too, but the figures are meant to be the worker's).
    declaring = ClusterBroker(rabbit_cluster.starting_at("c1"), prefix)
    await declaring.open()
    await declaring.declare(settings)
    await declaring.close()
    client = ClusterBroker(rabbit_cluster.starting_at("c3"), prefix)
    await client.open()
    yield client
    await rabbit_cluster.restore()
    await client.delete_topology()
    await client.close()


def start_cluster_worker(
    urls: list[str], database_url: str, prefix: str, started: list[WorkerProcess]
) -> WorkerProcess:
    worker = WorkerProcess(
        {"AMQP_URL": ",".join(urls), "DATABASE_URL": database_url, "WORKER_NAME_PREFIX": prefix}
    ).start()
    started.append(worker)
    return worker


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def worker_node(cluster: RabbitCluster, worker: WorkerProcess) -> str:
    connected = worker.events("broker_connected")
    assert connected, worker.output[-3000:]
    return cluster.node_of(str(connected[-1]["node"]))


async def run_node_loss(
    label: str,
    cluster: RabbitCluster,
    broker: ClusterBroker,
    worker_first: str,
    stop: str,
    database_url: str,
    prefix: str,
    workers: list[WorkerProcess],
    db: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = Ledger(broker, durable=True)
    await ledger.start()
    worker = start_cluster_worker(cluster.starting_at(worker_first), database_url, prefix, workers)
    await worker.wait_ready(within=60)
    assert worker_node(cluster, worker) == worker_first
    await ledger.wait_for(
        await ledger.send(CreateCoupon(code=SHARED_CODE, init_count=SHARED_COUNT)), within=30
    )
    flow = SteadyFlow(ledger, flow_commands, burst=BURST, pause=0.05)
    flow.start()
    await asyncio.sleep(FLOW_BEFORE)
    assert ledger.received() > 1, "the flow did not get going"
    queue = broker.topology.worker_queue
    leader_before = await cluster.leader_of(queue, ask="c3")

    stopped_at = time.monotonic()
    await cluster.stop_node(stop)
    try:
        resumed = await flow.first_outcome_after(stopped_at, within=RESUME_LIMIT + 30)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nevents received {ledger.received()}, worker running {worker.running()};"
            f" worker output:\n{worker.output[-6000:]}"
        ) from error
    leader_after = await cluster.leader_of(queue, ask="c3")
    node_after = worker_node(cluster, worker)
    await asyncio.sleep(FLOW_BEFORE)
    await flow.stop()
    settled = await ledger.wait_outcomes(within=60)
    await ledger.wait_settled(within=30)

    assert worker.running(), "the worker process exited:\n" + worker.output[-3000:]
    assert len(worker.events("worker_ready")) == 1
    for event in NOT_AN_OUTCOME_OF_FAILOVER:
        assert not worker.events(event), f"{event}: {worker.events(event)[:3]}"
    assert await worker.stop() == 0
    report = await ledger.check(db)
    report.emit(
        label,
        capsys,
        stopped_node=stop,
        worker_node_before=worker_first,
        worker_node_after=node_after,
        leader_before=leader_before,
        leader_after=leader_after,
        resumed_seconds_after_node_stopped=round(resumed, 1),
        settle_seconds=round(settled, 1),
        publish_retries=flow.retries,
        worker_reconnects=len(worker.events("broker_reconnected")),
        worker_starts=len(worker.events("worker_ready")),
        resume_bound_seconds=RESUME_LIMIT,
        resume_bound_rule="the_contract's_30_s",
    )
    report.assert_ok()
    assert resumed <= RESUME_LIMIT
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0
    if stop == worker_first:
        assert node_after != stop, "the worker did not move off the stopped node"
    if stop == leader_before:
        assert leader_after != stop, "no new leader was elected"


async def test_the_node_the_worker_is_on_stops(
    rabbit_cluster: RabbitCluster,
    cluster_broker: ClusterBroker,
    database_url: str,
    prefix: str,
    workers: list[WorkerProcess],
    db: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The worker's own node goes; it is not the queue's leader, nor the client's node."""
    leader = await rabbit_cluster.leader_of(cluster_broker.topology.worker_queue, ask="c3")
    worker_first = next(node for node in ("c1", "c2") if node != leader)
    assert leader != "c3", "the queue was declared through c1, yet c3 leads it"
    await run_node_loss(
        "cluster: worker's node stopped",
        rabbit_cluster,
        cluster_broker,
        worker_first=worker_first,
        stop=worker_first,
        database_url=database_url,
        prefix=prefix,
        workers=workers,
        db=db,
        capsys=capsys,
    )


async def test_the_node_leading_the_quorum_queue_stops(
    rabbit_cluster: RabbitCluster,
    cluster_broker: ClusterBroker,
    database_url: str,
    prefix: str,
    workers: list[WorkerProcess],
    db: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The queue's leader goes; the worker is connected to another node, which stays."""
    leader = await rabbit_cluster.leader_of(cluster_broker.topology.worker_queue, ask="c3")
    assert leader != "c3", "the queue was declared through c1, yet c3 leads it"
    worker_first = next(node for node in ("c1", "c2") if node != leader)
    await run_node_loss(
        "cluster: quorum queue leader stopped",
        rabbit_cluster,
        cluster_broker,
        worker_first=worker_first,
        stop=leader,
        database_url=database_url,
        prefix=prefix,
        workers=workers,
        db=db,
        capsys=capsys,
    )


# --- PostgreSQL: the primary lost, the standby promoted ---------------------------------------


@pytest.fixture
async def standby(db: AsyncEngine, database_url: str) -> AsyncIterator[PgStandby]:
    """A fresh standby of the default cluster (taken after `db` emptied the test's tables);
    afterwards the standby is discarded and 5432 is a running primary again, as found."""
    standby = PgStandby()
    try:
        await standby.up()
        yield standby
    finally:
        try:
            await asyncio.to_thread(PgStandby.down)
        finally:
            restore_all()
            await database_answers(database_url)
            await db.dispose()  # its pooled connections died with the primary


def multi_host(database_url: str, *hosts: str) -> str:
    """The test database's URL with libpq's host list, as an operator would write it."""
    url = make_url(database_url)
    return (
        f"postgresql+asyncpg://{url.username}@{','.join(hosts)}/{url.database}"
        "?target_session_attrs=read-write"
    )


async def stop_default_postgres(database_url: str) -> None:
    version, name = _cluster_of(database_url)
    process = await asyncio.create_subprocess_exec(
        "pg_ctlcluster", "--skip-systemctl-redirect", version, name, "stop", "-m", "fast"
    )
    async with asyncio.timeout(90):
        assert await process.wait() == 0, "pg_ctlcluster stop failed"


async def processed_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.scalars(select(tables.processed_command.c.message_id))).all())


@pytest.mark.disruptive
@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
async def test_the_primary_is_lost_and_the_standby_promoted(
    synchronous: bool,
    standby: PgStandby,
    broker: Broker,
    start_worker: StartWorker,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Mid-stream, the standby is cut off for LAG_WINDOW seconds (a partition, or a standby
    that fell behind), then the primary (the default cluster, 5432) is stopped and the
    standby promoted a second later, as a failover manager would. The worker's DATABASE_URL
    names both hosts with target_session_attrs=read-write.

    Synchronous replication: commits wait while the standby is away, so nothing the worker
    acknowledged is missing on the new primary: 0 lost, 0 doubled.
    Asynchronous: commits go on without the standby; what the worker acknowledged in the
    window is gone from the new primary. Measured, not hidden."""
    await standby.mode(synchronous)
    ledger = Ledger(broker)
    await ledger.start()
    worker = start_worker(database_url=multi_host(database_url, "127.0.0.1:5432", "127.0.0.1:5433"))
    await worker.wait_ready(within=60)
    await ledger.wait_for(
        await ledger.send(CreateCoupon(code=SHARED_CODE, init_count=SHARED_COUNT)), within=30
    )
    flow = SteadyFlow(ledger, flow_commands, burst=BURST, pause=0.05)
    flow.start()
    await asyncio.sleep(FLOW_BEFORE)
    assert ledger.received() > 1, "the flow did not get going"

    outcomes_at_detach = ledger.received()
    await standby.detach()
    # Half a second for outcomes of commits the standby confirmed just before it went.
    await asyncio.sleep(0.5)
    outcomes_before_window = ledger.received()
    await asyncio.sleep(LAG_WINDOW - 0.5)
    outcomes_in_window = ledger.received() - outcomes_before_window
    stopped_at = time.monotonic()
    await stop_default_postgres(database_url)
    await asyncio.sleep(1.0)  # a failover manager's detection time
    # Outcomes of commits made on the old primary from the moment the standby was being cut
    # off until the primary stopped: roughly what asynchronous replication loses here (give or
    # take the batches in flight when the WAL receiver stopped).
    outcomes_unreplicated = ledger.received() - outcomes_at_detach
    await standby.promote()
    promoted_at = time.monotonic()
    try:
        resumed = await flow.first_outcome_after(promoted_at, within=RESUME_LIMIT + 30)
    except AssertionError as error:
        raise AssertionError(f"{error}\nworker output:\n{worker.output[-6000:]}") from error
    await asyncio.sleep(FLOW_BEFORE)
    await flow.stop()
    settled = await ledger.wait_outcomes(within=90)
    await ledger.wait_settled(within=30)

    assert worker.running(), "the worker process exited:\n" + worker.output[-3000:]
    assert len(worker.events("worker_ready")) == 1
    for event in NOT_AN_OUTCOME_OF_FAILOVER:
        assert not worker.events(event), f"{event}: {worker.events(event)[:3]}"
    assert worker.events("database_unavailable"), worker.output[-3000:]
    assert await worker.stop() == 0

    promoted = create_async_engine(make_url(database_url).set(port=PgStandby.PORT))
    try:
        report = await ledger.check(promoted)
        applied = await processed_ids(promoted)
    finally:
        await promoted.dispose()
    # An outcome the worker published (after its commit) whose effect the new primary lacks.
    lost_effects = sum(
        1
        for command in ledger.expected(Expect.OUTCOME)
        if command.message_id in ledger.by_causation and command.message_id not in applied
    )
    report.emit(
        f"database failover ({'synchronous' if synchronous else 'asynchronous'} standby)",
        capsys,
        lag_window_seconds=LAG_WINDOW,
        outcomes_acked_in_window=outcomes_in_window,
        outcomes_acked_until_primary_stopped=outcomes_unreplicated,
        acked_effects_lost=lost_effects,
        resumed_seconds_after_promotion=round(resumed, 1),
        primary_stop_to_promoted_seconds=round(promoted_at - stopped_at, 1),
        settle_seconds=round(settled, 1),
        worker_starts=len(worker.events("worker_ready")),
        resume_bound_seconds=RESUME_LIMIT,
        resume_bound_rule="the_contract's_30_s",
    )
    assert report.dead_lettered == 0
    assert resumed <= RESUME_LIMIT
    if synchronous:
        assert outcomes_in_window == 0, "commits went on without the synchronous standby"
        report.assert_ok()
        assert report.lost == 0 and report.doubled == 0 and lost_effects == 0
    else:
        # The hazard this test exists to show: acknowledged, then forgotten by the failover.
        # Measured, not bounded: the figure above goes into the README.
        assert lost_effects >= 1, "no commit was lost: the lag window did not open"
