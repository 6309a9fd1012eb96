"""Crash anywhere: SIGKILL the worker at random moments while a mixed stream flows through it.

Delivery limit: the worker queue is a quorum queue with `x-delivery-limit` 20 (the default),
and RabbitMQ 3.10 counts every delivery returned by a crash toward it. A kill returns at most
what the worker had been delivered (prefetch 256), each message once, so after `KILLS` kills no
message can have been returned more than `KILLS` times: 6 < 20, and a healthy command can never
be dead-lettered by this test. (The ledger checks that nothing was.)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.ledger import Ledger
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

KILLS = 6
DELIVERY_LIMIT = 20  # the worker's default, which the test topology is declared with
SHARED_COUPONS = 8
SHARED_COUNT = 150
CREATES = 1500
CREATES_OF_TAKEN_CODES = 100
SHARED_REDEEMS = 2500
OWN_REDEEMS = 600
UNKNOWN_REDEEMS = 300
DUPLICATES = 500
CHUNK = 200


def mixed_commands(rng: random.Random) -> list[tuple[Command, str]]:
    """≥ 5,000 distinct commands in a shuffled order, plus re-publishes of some of them with
    the same message_id, each after its original."""
    codes = [f"crash-{i}" for i in range(CREATES)]
    shared = [f"crash-shared-{i}" for i in range(SHARED_COUPONS)]
    commands: list[Command] = [CreateCoupon(code=c, init_count=rng.randint(1, 5)) for c in codes]
    commands += [
        CreateCoupon(code=rng.choice(codes + shared), init_count=9)
        for _ in range(CREATES_OF_TAKEN_CODES)
    ]
    commands += [RedeemCoupon(code=rng.choice(shared)) for _ in range(SHARED_REDEEMS)]
    commands += [RedeemCoupon(code=rng.choice(codes)) for _ in range(OWN_REDEEMS)]
    commands += [RedeemCoupon(code=f"crash-unknown-{i}") for i in range(UNKNOWN_REDEEMS)]
    rng.shuffle(commands)
    stream = [(command, str(uuid.UUID(int=rng.getrandbits(128)))) for command in commands]
    for _ in range(DUPLICATES):
        original = rng.randrange(len(stream) - 1)
        stream.insert(rng.randint(original + 1, len(stream)), stream[original])
    return stream


async def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert settings.delivery_limit == DELIVERY_LIMIT  # what the test queue was declared with
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    print(f"crash anywhere: seed={seed} (rerun with FAULT_SEED={seed})")  # noqa: T201
    rng = random.Random(seed)
    ledger = Ledger(broker)
    await ledger.start()
    stream = mixed_commands(rng)

    worker = start_worker()
    await worker.wait_ready()
    await ledger.send_many(
        (CreateCoupon(code=f"crash-shared-{i}", init_count=SHARED_COUNT), None)
        for i in range(SHARED_COUPONS)
    )
    await ledger.wait_outcomes(within=60)

    async def publish() -> None:
        for start in range(0, len(stream), CHUNK):
            await ledger.send_many(stream[start : start + CHUNK])
            await asyncio.sleep(0.4)

    publishing = asyncio.create_task(publish())
    kills: list[str] = []
    try:
        for kill in range(KILLS):
            await asyncio.sleep(rng.uniform(0.3, 2.5))
            processed = worker.processed()
            waiting = await broker.depth(broker.topology.worker_queue)
            worker.signal(signal.SIGKILL)
            assert await worker.wait_exit(within=30) == -signal.SIGKILL
            kills.append(f"{processed}/{waiting}")
            worker = start_worker(name=f"worker-{kill + 1}")
            await worker.wait_ready(within=60)
        await publishing
    finally:
        publishing.cancel()

    seconds = await ledger.wait_outcomes(within=180)
    await ledger.wait_settled(within=30)
    assert await worker.stop(within=60) == 0
    report = await ledger.check(db)
    report.emit(
        "crash anywhere",
        capsys,
        seed=seed,
        kills=len(kills),
        processed_before_kill_per_run_and_queue_depth=",".join(kills),
        settle_seconds_after_last_restart=round(seconds, 1),
    )
    report.assert_ok()
    assert report.commands >= 5000 and report.sent > report.commands
    assert report.dead_lettered == 0 and report.lost == 0 and report.doubled == 0
    assert len(kills) == KILLS < DELIVERY_LIMIT
