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
from tests.support.worker_process import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

IN_FLIGHT = 100  # WORKER_PREFETCH of the stopped worker
# The careful start takes the head of the queue with basic.get (outside the prefetch count) and
# handles it alone before it opens the one consumer with the full prefetch: that head is held on
# top of the prefetch while it waits (README, WORKER_PREFETCH).
CAREFUL_START_EXTRA = 1
QUIET = 1.0  # seconds the queue depth must stay put to count as "the worker holds no more"
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
    """The prefetch window is full at SIGTERM: redeems held up by a row lock the test holds,
    released once the worker is stopping. The worker finishes them, takes nothing new (the
    queued creates stay queued, counted by the broker before the signal and after the exit),
    delivers nothing twice, and exits 0 within its grace period."""
    grace = 15.0
    queued_behind = 400
    ledger = await ledger_with_shared_coupon(broker, start_worker)
    async with redeems_held(db, ledger) as (transaction, redeem_ids):
        create_ids = await ledger.send_many(
            [(CreateCoupon(code=f"stop-{i}", init_count=2), None) for i in range(queued_behind)]
        )
        worker = start_stopping_worker(start_worker, grace)
        await worker.wait_ready()
        # The careful start's head plus the full prefetch: exactly one create is held beside the
        # redeems, and the queue keeps exactly the rest, steadily.
        queued_at_term = await worker_holds(broker, queued_behind - CAREFUL_START_EXTRA)
        assert queued_at_term == queued_behind - CAREFUL_START_EXTRA
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        await worker.wait_for_log("worker_stopping", within=10)
        await transaction.rollback()  # the in-flight redeems can go on now
        code = await worker.wait_exit(within=grace + 30)
        exit_seconds = time.monotonic() - signalled
    stopped = worker.events("worker_stopped")
    assert code == 0, worker.output[-3000:]
    assert stopped, worker.output[-3000:]
    returned = int(stopped[0]["returned"])
    still_queued = await broker.depth(broker.topology.worker_queue)
    assert await broker.depth(broker.topology.dead_queue) == 0
    # What the first worker answered, by the events (not by its own log).
    await ledger.wait_quiet(QUIET)
    answered = set(ledger.by_causation)
    creates_answered = answered & set(create_ids)

    restarted = start_worker(name="restarted")
    await restarted.wait_ready()
    await ledger.wait_outcomes(within=120)
    await ledger.wait_settled(within=30)
    assert await restarted.stop() == 0
    report = await ledger.check(db)
    report.emit(
        "graceful stop (in flight finished)",
        capsys,
        held_at_sigterm=queued_behind + IN_FLIGHT - queued_at_term,
        queued_at_sigterm=queued_at_term,
        answered_by_stopping_worker=len(answered & {*redeem_ids, *create_ids}),
        returned=returned,
        left_queued=still_queued,
        exit_code=code,
        exit_seconds=round(exit_seconds, 2),
        grace_period=grace,
    )
    report.assert_ok()
    assert exit_seconds <= grace + EXIT_TOLERANCE
    # Nothing new after SIGTERM: the broker's count of queued commands did not move, and the
    # stopping worker answered exactly what it held — every redeem and the one create.
    assert still_queued == queued_at_term
    assert set(redeem_ids) <= answered
    assert len(creates_answered) == CAREFUL_START_EXTRA
    assert returned == 0
    # No redelivery: every command's outcome was published exactly once.
    assert report.duplicates == 0
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
    async with redeems_held(db, ledger) as (transaction, _):
        worker = start_stopping_worker(start_worker, grace)
        await worker.wait_ready()
        held = IN_FLIGHT - await worker_holds(broker, 0)
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = await worker.wait_exit(within=grace + 30)
        exit_seconds = time.monotonic() - signalled
        # Counted by the broker while the lock still holds: every held redeem is back.
        back_in_queue = await broker.depth(broker.topology.worker_queue)
        await transaction.rollback()
    stopped = worker.events("worker_stopped")
    assert code == 0, worker.output[-3000:]
    assert stopped and worker.events("grace_period_elapsed"), worker.output[-3000:]
    returned = int(stopped[0]["returned"])
    assert await broker.depth(broker.topology.dead_queue) == 0
    await ledger.wait_quiet(QUIET)  # an outcome published before the exit is in by now
    answered_before_restart = len(ledger.by_causation) - 1  # less the shared coupon's create

    restarted = start_worker(name="restarted")
    await restarted.wait_ready()
    await ledger.wait_outcomes(within=60)
    await ledger.wait_settled(within=30)
    assert await restarted.stop() == 0
    report = await ledger.check(db)
    report.emit(
        "graceful stop (grace elapsed)",
        capsys,
        held_at_sigterm=held,
        returned=returned,
        back_in_queue=back_in_queue,
        answered_before_restart=answered_before_restart,
        exit_code=code,
        exit_seconds=round(exit_seconds, 2),
        grace_period=grace,
    )
    report.assert_ok()
    # Every held redeem was stuck: all of them returned, none answered, none lost.
    assert held == returned == back_in_queue == IN_FLIGHT
    assert answered_before_restart == 0
    assert exit_seconds <= grace + EXIT_TOLERANCE
    assert report.duplicates == 0
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0


def start_stopping_worker(start_worker: StartWorker, grace: float) -> WorkerProcess:
    """One batch at a time: the first redeem's batch waits on the row lock and everything else
    delivered waits behind it, so that exactly the prefetch window (plus the careful start's
    head) is in flight at SIGTERM. With more batches at once, batches of creates would pass the
    stuck redeems and keep taking new deliveries, and the window would not be full."""
    return start_worker(
        worker_prefetch=str(IN_FLIGHT),
        worker_concurrency="1",
        worker_grace_period=str(grace),
    )


async def worker_holds(broker: Broker, left: int, within: float = 30.0) -> int:
    """Wait until no more than `left` commands are queued (the worker took the rest), then
    until the queue's depth stays put for QUIET seconds (the worker takes no more); returns
    that depth, which a worker holding more than it should would push below `left`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    queue = broker.topology.worker_queue
    while True:
        depth = await broker.depth(queue)
        if depth <= left:
            await asyncio.sleep(QUIET)
            if await broker.depth(queue) == depth:
                return depth
        assert loop.time() < deadline, f"{depth} commands still queued after {within}s"
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
async def redeems_held(
    db: AsyncEngine, ledger: Ledger
) -> AsyncIterator[tuple[AsyncTransaction, list[str]]]:
    """IN_FLIGHT redeems of SHARED_CODE queued while the test holds the coupon's row lock; the
    yielded transaction releases it when rolled back (at the latest when the block ends)."""
    async with db.connect() as blocker:
        transaction = await blocker.begin()
        await blocker.execute(
            text("SELECT 1 FROM coupon WHERE code = :code FOR UPDATE"), {"code": SHARED_CODE}
        )
        ids = await ledger.send_many(
            [(RedeemCoupon(code=SHARED_CODE), None) for _ in range(IN_FLIGHT)]
        )
        yield transaction, ids
