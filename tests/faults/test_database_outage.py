"""A PostgreSQL outage of ≥ 30 s with commands queued: they wait, then all go through.

DISRUPTIVE: stops the local PostgreSQL cluster; marked `disruptive`, so it holds the machine's
service lock exclusively (tests/support/service_lock.py).

The worker queue is declared here with a delivery limit of 3 (not the default 20): a worker
that nacked or requeued held commands while the database is down would push them past it
within seconds and the ledger would find them dead-lettered. So "nothing dead-lettered" also
proves that the outage did not burn the delivery limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager

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
    postgres_stopped,
    rabbitmq_app_stopped,
    restore_all,
)
from tests.support.services import Services
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

OUTAGE_SECONDS = 32.0  # ≥ 30 s, as the contract's guarantee 4 is tested for
CATCH_UP_LIMIT = 30.0  # everything processed within 30 s of PostgreSQL answering again
DELIVERY_LIMIT = 3
SHARED_CODE = "outage-shared"
SHARED_COUNT = 100_000  # more than the test can send: a correct worker never says Exhausted
MIN_SENT_DURING_OUTAGE = 100  # the flow sends ~40/s; a test with none would prove nothing
# Log events that would mean held commands were returned, failed or dead-lettered.
NOT_DURING_AN_OUTAGE = (
    "publish_failed",
    "requeue_lost",
    "command_failed",
    "command_failed_retrying",
    "batch_failed_retrying_alone",
    "command_dead_lettered",
    "dead_letter_failed",
)


@pytest.fixture(autouse=True)
def services_restored() -> Iterator[None]:
    yield
    restore_all()


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """The test topology is declared with the same delivery limit as the workers' own."""
    return {"delivery_limit": DELIVERY_LIMIT}


def outage_commands(count: int) -> Command:
    if count % 4 == 0:
        return CreateCoupon(code=f"outage-{count}", init_count=3)
    if count % 13 == 0:
        return RedeemCoupon(code=f"outage-unknown-{count}")
    return RedeemCoupon(code=SHARED_CODE)


@pytest.mark.disruptive
async def test_database_outage_holds_commands_and_catches_up(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    database_url: str,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    resume = bounds.database_resumed(settings)
    ledger = Ledger(broker)
    await ledger.start()
    worker = start_worker(worker_delivery_limit=str(DELIVERY_LIMIT))
    await worker.wait_ready()
    await ledger.wait_for(
        await ledger.send(CreateCoupon(code=SHARED_CODE, init_count=SHARED_COUNT))
    )
    # A steady flow (~40 commands/s) before, during and after the outage: transactions are
    # in flight when PostgreSQL goes, and commands keep arriving while it is away.
    flow = SteadyFlow(ledger, outage_commands, burst=4, pause=0.1)
    flow.start()
    await ledger.wait_received(50, within=30)

    dead_queue = broker.topology.dead_queue
    async with postgres_stopped(database_url) as outage:
        await worker.wait_for_log("database_unavailable", within=30)
        before = len(ledger.commands)  # commands recorded from now on were sent in the outage
        while time.monotonic() - outage.stopped_at < OUTAGE_SECONDS:
            assert worker.running(), "the worker died in the outage:\n" + worker.output[-3000:]
            assert await broker.depth(dead_queue) == 0
            await asyncio.sleep(1)
        # Commands confirmed by the broker while PostgreSQL was away: none can have an outcome
        # yet (it would have been answered without the database).
        ledger.received()
        sent_in_outage = list(ledger.commands)[before:]
        answered_in_outage = [m for m in sent_in_outage if m in ledger.by_causation]
    # Resumed: a command sent after PostgreSQL answered has its outcome (behind the backlog).
    resumed = await flow.first_outcome_after(outage.answering_at, within=resume.seconds + 30)
    await flow.stop()  # everything sent before PostgreSQL answered must now go through
    caught_up = await ledger.wait_outcomes(within=CATCH_UP_LIMIT + 30)
    after_answering = time.monotonic() - outage.answering_at
    await ledger.wait_settled(within=30)

    assert worker.running()
    assert len(worker.events("worker_ready")) == 1
    down_logs = worker.events("database_unavailable")
    up_logs = worker.events("database_available")
    held_retries = up_logs[0].get("retries") if up_logs else None
    for event in NOT_DURING_AN_OUTAGE:
        assert not worker.events(event), f"{event}: {worker.events(event)[:3]}"
    assert await worker.stop() == 0
    await db.dispose()  # the test's own pooled connections died with the server
    report = await ledger.check(db)
    report.emit(
        "database outage",
        capsys,
        outage_seconds=outage.down_seconds,
        commands_sent_during_outage=len(sent_in_outage),
        answered_during_outage=len(answered_in_outage),
        first_outcome_seconds_after_postgres_answered=round(resumed, 1),
        **resume.figures("resume"),
        processed_seconds_after_postgres_answered=round(after_answering, 1),
        catch_up_bound_seconds=CATCH_UP_LIMIT,
        wait_seconds=round(caught_up, 1),
        outage_logged=len(down_logs),
        recovery_logged=len(up_logs),
        retries_in_outage=held_retries,
        delivery_limit=DELIVERY_LIMIT,
        worker_ready_logs=len(worker.events("worker_ready")),
    )
    report.assert_ok()
    assert len(sent_in_outage) >= MIN_SENT_DURING_OUTAGE
    assert answered_in_outage == []
    assert report.wrong == 0 and "Exhausted" not in report.outcome_kinds
    assert outage.down_seconds >= 30
    assert len(down_logs) == 1 and len(up_logs) == 1
    assert resumed <= resume.seconds
    assert after_answering <= CATCH_UP_LIMIT
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0


@pytest.mark.parametrize(
    "stopped",
    [
        lambda: postgres_stopped("postgresql+asyncpg://app:secret@db.example.com:5432/coupons"),
        lambda: rabbitmq_app_stopped("amqp://app:secret@mq.example.com:5672/"),
    ],
    ids=["postgresql", "rabbitmq"],
)
async def test_outages_refuse_services_they_cannot_control(
    stopped: Callable[[], AbstractAsyncContextManager[Outage]],
) -> None:
    """A remote service is never stopped, and the test says so instead of skipping."""
    with pytest.raises(pytest.fail.Exception, match="only on this machine"):
        async with stopped():
            raise AssertionError("the outage must not begin")  # pragma: no cover


@pytest.mark.parametrize("service", ["postgresql", "rabbitmq"])
async def test_outages_refuse_tests_not_marked_disruptive(
    service: str, services: Services, database_url: str
) -> None:
    """Without the exclusive service lock (this test is not `disruptive`), nothing is stopped."""
    stopped = (
        postgres_stopped(database_url)
        if service == "postgresql"
        else rabbitmq_app_stopped(services.amqp_url)
    )
    with pytest.raises(pytest.fail.Exception, match="mark the test"):
        async with stopped:
            raise AssertionError("the outage must not begin")  # pragma: no cover
    with pytest.raises(pytest.fail.Exception, match="mark the test"):
        await close_broker_connections(services.amqp_url)
