"""Broker restart under a steady flow: the same worker process reconnects and resumes.

DISRUPTIVE: stops RabbitMQ's app / closes every broker connection; marked `disruptive`, so it
holds the machine's service lock exclusively (tests/support/service_lock.py).

The test's own client is a robust connection and its event collector a durable queue, so that
the test, like the worker, rides through the restart; its publisher retries a publish that the
outage interrupted, with the same message_id (which the worker de-duplicates).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.support import bounds
from tests.support.broker import Broker
from tests.support.ledger import Ledger, SteadyFlow
from tests.support.outages import (
    Outage,
    close_broker_connections,
    rabbitmq_app_stopped,
    restore_all,
)
from tests.support.resumption import resume_and_settle
from tests.support.services import Services
from worker.settings import Settings

pytestmark = [
    pytest.mark.faults,
    pytest.mark.disruptive,
    pytest.mark.timeout(240),
    # aiormq leaves the socket writer of a connection the broker closed to the garbage
    # collector (the test's client, not the worker): not a finding of this test.
    pytest.mark.filterwarnings("ignore:unclosed <StreamWriter:ResourceWarning"),
]

APP_DOWN_SECONDS = 5.0
SHARED_CODE = "restart-shared"
SHARED_COUNT = 100_000
BURST = 10


@pytest.fixture(autouse=True)
def services_restored() -> Iterator[None]:
    yield
    restore_all()


@pytest.fixture
def robust_broker() -> bool:
    return True


def restart_commands(count: int) -> Command:
    if count % 3 == 0:
        return CreateCoupon(code=f"restart-{count}", init_count=2)
    if count % 17 == 0:
        return RedeemCoupon(code=f"restart-unknown-{count}")
    return RedeemCoupon(code=SHARED_CODE)


async def run_through(
    disruption: Callable[[], Awaitable[Outage]],
    label: str,
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    resume = bounds.broker_resumed(settings)
    ledger = Ledger(broker, durable=True)
    await ledger.start()
    worker = start_worker()
    await worker.wait_ready()
    await ledger.wait_for(
        await ledger.send(CreateCoupon(code=SHARED_CODE, init_count=SHARED_COUNT))
    )
    flow = SteadyFlow(ledger, restart_commands, burst=BURST, pause=0.05)
    flow.start()
    await asyncio.sleep(2)  # a flow under way when the broker goes
    assert ledger.received() > 1, "the flow did not get going"

    outage = await disruption()
    resumed, settled = await resume_and_settle(
        flow, outage.answering_at, resume.seconds, broker, worker
    )

    assert worker.running(), "the worker process exited:\n" + worker.output[-3000:]
    assert len(worker.events("worker_ready")) == 1
    reconnects = len(worker.events("broker_reconnected"))
    assert reconnects >= 1, worker.output[-3000:]
    assert await worker.stop() == 0
    report = await ledger.check(db)
    gc.collect()  # the dropped client connection's leftovers, under this module's filter
    report.emit(
        label,
        capsys,
        broker_down_seconds=outage.down_seconds,
        resumed_seconds_after_broker_answered=round(resumed, 1),
        **resume.figures("resume"),
        settle_seconds=round(settled, 1),
        publish_retries=flow.retries,
        worker_reconnects=reconnects,
        worker_ready_logs=len(worker.events("worker_ready")),
    )
    report.assert_ok()
    assert resumed <= resume.seconds
    # The shared coupon cannot run out: every redeem of it is granted.
    assert report.wrong == 0 and "Exhausted" not in report.outcome_kinds
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0


async def test_rabbitmq_app_stop_start_worker_resumes(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    services: Services,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def stop_and_start() -> Outage:
        async with rabbitmq_app_stopped(services.amqp_url) as outage:
            await asyncio.sleep(APP_DOWN_SECONDS)  # the outage itself, not an assertion
        await broker.wait_queue(broker.topology.worker_queue, within=60)
        return outage

    await run_through(
        stop_and_start, "broker stop_app/start_app", broker, start_worker, db, settings, capsys
    )


async def test_broker_closes_connections_worker_resumes(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    services: Services,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def close_all() -> Outage:
        return await close_broker_connections(services.amqp_url)

    await run_through(
        close_all, "broker close_all_connections", broker, start_worker, db, settings, capsys
    )
