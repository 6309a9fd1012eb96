"""Crash at the exact worst points, made deterministic by the fault-injection seam.

`WORKER_FAULT_PLAN=point:crash:code` SIGKILLs the worker whenever a command on `code` reaches
`point` (worker/testing/faults.py; it fires every time, so the restarted worker runs without a
plan).
The fault commands travel in one batch with ordinary ones, so the whole batch dies with them.
"""

from __future__ import annotations

import signal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.ledger import Ledger
from worker.db import tables
from worker.testing.faults import FaultPoint

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

REDEEM_CODE = "fault-wp-redeem"
CREATE_CODE = "fault-wp-create"
SHARED_CODE = "wp-shared"


async def rows(db: AsyncEngine, message_ids: list[str]) -> int:
    async with db.connect() as connection:
        count = await connection.scalar(
            select(func.count())
            .select_from(tables.processed_command)
            .where(tables.processed_command.c.message_id.in_(message_ids))
        )
    return int(count or 0)


async def remaining(db: AsyncEngine, code: str) -> int | None:
    async with db.connect() as connection:
        count = await connection.scalar(
            select(tables.coupon.c.remaining_count).where(tables.coupon.c.code == code)
        )
    return None if count is None else int(count)


@pytest.mark.parametrize("point", list(FaultPoint), ids=str)
async def test_crash_at_worst_point_gives_one_effect_and_one_outcome(
    point: FaultPoint,
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = Ledger(broker)
    await ledger.start()

    # The coupons the batch redeems exist before the faulty worker starts.
    setup = start_worker(name="setup")
    await setup.wait_ready()
    await ledger.send(CreateCoupon(code=REDEEM_CODE, init_count=5))
    await ledger.send(CreateCoupon(code=SHARED_CODE, init_count=10))
    await ledger.wait_outcomes(within=30)
    assert await setup.stop() == 0

    # One batch: ordinary commands with the two fault commands among them, queued up front.
    batch: list[Command] = [CreateCoupon(code=f"wp-{i}", init_count=2) for i in range(30)]
    batch += [RedeemCoupon(code=SHARED_CODE) for _ in range(12)]
    batch.insert(17, RedeemCoupon(code=REDEEM_CODE))
    batch.insert(25, CreateCoupon(code=CREATE_CODE, init_count=3))
    ids = [await ledger.send(command) for command in batch]
    fault_ids = [ids[17], ids[25]]

    faulty = start_worker(
        name=f"faulty-{point}",
        worker_fault_plan=f"{point}:crash:{REDEEM_CODE},{point}:crash:{CREATE_CODE}",
    )
    faulty_exit = await faulty.wait_exit(within=60)
    assert faulty_exit == -signal.SIGKILL, faulty.output[-3000:]
    assert faulty.events("fault_injection_enabled")

    # The crash landed where it was meant to, for both fault commands. The batch that met a
    # fault first died at the point; the other fault command, in that batch or in another one
    # (which then died at the same point, or never got there), cannot be further along.
    await ledger.wait_quiet(1.0)  # whatever was published before the crash has arrived
    committed = await rows(db, fault_ids)
    published = [m for m in fault_ids if m in ledger.by_causation]
    if point in (FaultPoint.HANDLE, FaultPoint.BEFORE_COMMIT):
        assert committed == 0 and published == []
        assert await remaining(db, REDEEM_CODE) == 5
    elif point is FaultPoint.AFTER_COMMIT:
        assert committed >= 1 and published == []
    else:
        assert committed >= len(published) >= 1
    before_restart = ledger.received()

    restarted = start_worker(name="restarted")
    await restarted.wait_ready()
    seconds = await ledger.wait_outcomes(within=60)
    await ledger.wait_settled(within=30)
    assert await restarted.stop() == 0

    report = await ledger.check(db)
    report.emit(
        f"worst point {point}",
        capsys,
        faulty_exit=faulty_exit,
        fault_commands_committed_before_restart=committed,
        fault_commands_published_before_restart=len(published),
        events_before_restart=before_restart,
        recovery_seconds=round(seconds, 1),
    )
    report.assert_ok()
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0
    assert report.wrong == 0
    assert await remaining(db, REDEEM_CODE) == 4
    assert await remaining(db, SHARED_CODE) == 0  # 10 redeemed, 2 Exhausted
    assert await remaining(db, CREATE_CODE) == 3
    # Each fault command's outcome: published once, or — when its batch died after publishing
    # and before the ack — once before the crash and once more, identically, after it.
    copies = {m: len(ledger.by_causation[m]) for m in fault_ids}
    assert copies == {m: 2 if m in published else 1 for m in fault_ids}
