"""No oversell (contract guarantee 3): four worker processes on one queue race to redeem one
coupon; exactly `min(redeems, remaining)` succeed and the count never goes below zero."""

from __future__ import annotations

import random
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.ledger import Ledger
from worker.db import tables

pytestmark = pytest.mark.faults

WORKERS = 4
REMAINING = 100
REDEEMS = 1_000
DUPLICATES = 150


@pytest.mark.timeout(240)
async def test_four_workers_never_oversell_one_coupon(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Ledger(broker)
    await ledger.start()
    workers = [start_worker(name=f"worker-{n}") for n in range(WORKERS)]
    for worker in workers:
        await worker.wait_ready(within=60)
    queue = broker.topology.worker_queue
    consumers = await broker.consumers(queue)
    assert consumers == WORKERS, "every worker consumes the one queue"

    code = "HOT-1"
    await ledger.send(CreateCoupon(code=code, init_count=REMAINING))
    await ledger.wait_outcomes(within=30)

    # 1,000 distinct redeems, and 150 of them published a second time with the same
    # message_id, shuffled in among the rest (a fixed seed keeps runs comparable).
    shuffle = random.Random(20261126)
    ids = [str(uuid.uuid4()) for _ in range(REDEEMS)]
    sends: list[tuple[Command, str | None]] = [(RedeemCoupon(code=code), i) for i in ids]
    sends += [(RedeemCoupon(code=code), i) for i in shuffle.sample(ids, DUPLICATES)]
    shuffle.shuffle(sends)
    await ledger.send_many(sends)

    await ledger.wait_settled(within=180, quiet=1.0)
    report = await ledger.check(db)
    async with db.connect() as connection:
        remaining = await connection.scalar(
            select(tables.coupon.c.remaining_count).where(tables.coupon.c.code == code)
        )
    processed_by = [worker.processed() for worker in workers]
    report.emit(
        "many workers",
        capsys,
        workers=consumers,
        remaining=remaining,
        processed_by="/".join(map(str, processed_by)),
        alive=sum(worker.running() for worker in workers),
    )

    assert remaining == 0
    assert report.outcome_kinds == {"created": 1, "redeemed": REMAINING, "Exhausted": 900}
    assert report.commands == REDEEMS + 1 and report.sent == REDEEMS + DUPLICATES + 1
    assert report.outcomes == REDEEMS + 1 and report.lost == 0 and report.doubled == 0
    # Every publish, duplicates included, was answered; a duplicate with the same event id
    # (the ledger fails on a second distinct outcome for one command).
    assert report.event_copies == report.sent
    assert report.dead_lettered == 0
    assert all(count > 0 for count in processed_by), f"a worker took nothing: {processed_by}"
    assert all(worker.running() for worker in workers)
    report.assert_ok()
