"""Graceful stop: SIGTERM with ~100 commands in flight → exit 0 within the grace period, nothing
dead-lettered (aio-pika's `message.process()` would reject the cancelled ones), nothing lost."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncTransaction

from contracts import CreateCoupon, RedeemCoupon
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

IN_FLIGHT = 100  # prefetch: what the worker holds unacknowledged at any moment
# The worker plans its stop to end within the grace period; this covers what the test's clock
# adds around it (signal delivery, interpreter exit, this test's 50 ms polling) on a busy box.
EXIT_TOLERANCE = 1.0
SHARED_CODE = "stop-shared"


async def test_sigterm_finishes_in_flight_commands_and_exits_zero(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exactly the prefetch window is in flight at SIGTERM: redeems held up by a row lock the
    test holds, released once the worker is stopping. The worker finishes them, takes nothing
    new (the queued creates stay queued), and exits 0 within its grace period."""
    grace = 15.0
    queued_behind = 400
    ledger = await ledger_with_shared_coupon(broker, start_worker)
    async with redeems_held(db, ledger) as transaction:
        await ledger.send_many(
            [(CreateCoupon(code=f"stop-{i}", init_count=2), None) for i in range(queued_behind)]
        )
        worker = start_worker(worker_prefetch=str(IN_FLIGHT), worker_grace_period=str(grace))
        await worker.wait_ready()
        await worker_holds(broker, queued_behind)
        at_term = worker.processed()
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        await worker.wait_for_log("worker_stopping", within=10)
        await transaction.rollback()  # the in-flight redeems can go on now
        code = await worker.wait_exit(within=grace + 30)
        exit_seconds = time.monotonic() - signalled
    processed = worker.processed()
    stopped = worker.events("worker_stopped")
    assert code == 0, worker.output[-3000:]
    assert stopped, worker.output[-3000:]
    returned = int(stopped[0]["returned"])
    still_queued = await broker.depth(broker.topology.worker_queue)
    assert await broker.depth(broker.topology.dead_queue) == 0

    restarted = start_worker(name="restarted")
    await restarted.wait_ready()
    await ledger.wait_outcomes(within=120)
    await ledger.wait_settled(within=30)
    assert await restarted.stop() == 0
    report = await ledger.check(db)
    report.emit(
        "graceful stop (in flight finished)",
        capsys,
        in_flight_at_sigterm=processed - at_term + returned,
        finished_after_sigterm=processed - at_term,
        returned=returned,
        left_queued=still_queued,
        exit_code=code,
        exit_seconds=round(exit_seconds, 2),
        grace_period=grace,
    )
    report.assert_ok()
    assert exit_seconds <= grace + EXIT_TOLERANCE
    assert returned == 0
    assert processed - at_term >= IN_FLIGHT  # every held redeem finished after the SIGTERM
    assert still_queued == IN_FLIGHT + queued_behind - processed  # nothing new was taken
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0


async def test_sigterm_when_in_flight_commands_cannot_finish_returns_them(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The in-flight commands are stuck behind a row lock the test holds: the grace period
    runs out, the worker cancels them and returns them to the queue — not to the dead letters."""
    grace = 3.0
    ledger = await ledger_with_shared_coupon(broker, start_worker)
    async with redeems_held(db, ledger) as transaction:
        worker = start_worker(worker_prefetch=str(IN_FLIGHT), worker_grace_period=str(grace))
        await worker.wait_ready()
        await worker_holds(broker)
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = await worker.wait_exit(within=grace + 30)
        exit_seconds = time.monotonic() - signalled
        await transaction.rollback()
    stopped = worker.events("worker_stopped")
    assert code == 0, worker.output[-3000:]
    assert stopped and worker.events("grace_period_elapsed"), worker.output[-3000:]
    returned = int(stopped[0]["returned"])
    assert await broker.depth(broker.topology.dead_queue) == 0

    restarted = start_worker(name="restarted")
    await restarted.wait_ready()
    await ledger.wait_outcomes(within=60)
    await ledger.wait_settled(within=30)
    assert await restarted.stop() == 0
    report = await ledger.check(db)
    report.emit(
        "graceful stop (grace elapsed)",
        capsys,
        in_flight=IN_FLIGHT,
        returned=returned,
        exit_code=code,
        exit_seconds=round(exit_seconds, 2),
        grace_period=grace,
    )
    report.assert_ok()
    assert returned >= 1
    assert exit_seconds <= grace + EXIT_TOLERANCE
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0


async def worker_holds(broker: Broker, left: int = 0, within: float = 30.0) -> None:
    """Wait until the worker took everything queued but `left` commands."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (ready := await broker.depth(broker.topology.worker_queue)) > left:
        assert loop.time() < deadline, f"{ready} commands still queued after {within}s"
        await asyncio.sleep(0.1)


async def ledger_with_shared_coupon(broker: Broker, start_worker: StartWorker) -> Ledger:
    """A started ledger, and SHARED_CODE created through a worker that is stopped again."""
    ledger = Ledger(broker)
    await ledger.start()
    setup = start_worker(name="setup")
    await setup.wait_ready()
    await ledger.wait_for(await ledger.send(CreateCoupon(code=SHARED_CODE, init_count=1000)))
    assert await setup.stop() == 0
    return ledger


@asynccontextmanager
async def redeems_held(db: AsyncEngine, ledger: Ledger) -> AsyncIterator[AsyncTransaction]:
    """IN_FLIGHT redeems of SHARED_CODE queued while the test holds the coupon's row lock; the
    yielded transaction releases it when rolled back (at the latest when the block ends)."""
    async with db.connect() as blocker:
        transaction = await blocker.begin()
        await blocker.execute(
            text("SELECT 1 FROM coupon WHERE code = :code FOR UPDATE"), {"code": SHARED_CODE}
        )
        await ledger.send_many([(RedeemCoupon(code=SHARED_CODE), None) for _ in range(IN_FLIGHT)])
        yield transaction
