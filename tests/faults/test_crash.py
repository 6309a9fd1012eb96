"""Crash anywhere: SIGKILL the worker at random points while a mixed stream flows through it.

Delivery limit: the worker queue is a quorum queue with `x-delivery-limit` 20 (the default),
and RabbitMQ 3.10 counts every delivery returned by a crash toward it. A kill returns at most
what the worker had been delivered (its prefetch, 500 by default), each message once, so after
`KILLS` kills no message can have been returned more than `KILLS` times: 6 < 20, and a healthy
command can never be dead-lettered by this test. (The ledger checks that nothing was.)

Each kill must interrupt work, or it proves nothing: kills fall at random points of the
stream's progress, while work is queued, and the broker counts what each one interrupted.
The worker is frozen first (SIGSTOP: wherever it is, it stops there, as a SIGKILL would stop
it) and the publisher paused, so the queue's depth holds still; after the SIGKILL the broker
returns the worker's unacked deliveries to the queue, and the depth grows by exactly that many.
Those are delivered again to the next worker: each kill causes redeliveries, which the ledger
then checks were neither lost nor applied twice.
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
from tests.support.queue_depth import depth_once_returned, steady_depth
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

    publisher_paused = asyncio.Lock()  # held by a kill; the publisher takes it per chunk

    async def publish() -> None:
        for start in range(0, len(stream), CHUNK):
            async with publisher_paused:
                await ledger.send_many(stream[start : start + CHUNK])
            # Unpaced: a kill waiting for the lock gets it before the next chunk (asyncio's
            # Lock serves its waiters first).

    publishing = asyncio.create_task(publish())
    queue = broker.topology.worker_queue
    kills: list[str] = []
    returned_by_kill: list[int] = []
    # Kill moments are random points of the stream's progress (events received), not of the
    # clock: up to 85 % of the stream, the queue still holds work behind the worker, however
    # fast the worker runs, so every kill finds it busy (in a full batch, or taking the
    # redelivered head one at a time).
    start = ledger.received()
    moments = sorted(rng.sample(range(len(stream) // 20, len(stream) * 85 // 100), KILLS))
    try:
        for kill, moment in enumerate(moments):
            await ledger.wait_received(start + moment, within=120)
            # What the kill interrupts is measured by the broker alone. The publisher pauses
            # (once the chunk in flight is confirmed) and the worker is frozen (SIGSTOP: from
            # its point of view the kill happens now, wherever it is); frozen, it can neither
            # ack nor take more than its prefetch window, so the queue's depth holds still.
            # Killed, its unacked deliveries go back to the queue, to be delivered again: the
            # depth grows by exactly the work the kill interrupted.
            async with publisher_paused:
                worker.signal(signal.SIGSTOP)
                queued = await steady_depth(broker, queue)
                processed = worker.processed()
                worker.signal(signal.SIGKILL)
                assert await worker.wait_exit(within=30) == -signal.SIGKILL
                returned = await depth_once_returned(broker, queue) - queued
            returned_by_kill.append(returned)
            kills.append(f"{processed}/{queued}/{returned}")
            worker = start_worker(name=f"worker-{kill + 1}")
            # Connected, not ready: the next kill may land in its careful start (the
            # redelivered head taken one at a time), which `worker_ready` waits out.
            await worker.wait_for_log("worker_connected", within=60)
        last_restart = time.monotonic()
        await publishing
        published = time.monotonic()
    finally:
        publishing.cancel()

    await ledger.wait_outcomes(within=180)
    settled = time.monotonic()
    await ledger.wait_settled(within=30)
    assert await worker.stop(within=60) == 0
    report = await ledger.check(db)
    # The kills interrupted work: the broker took back commands the worker held unacked. Not
    # necessarily every kill: one that lands in a restarted worker's careful start (redelivered
    # commands taken one at a time with basic.get) can find it holding nothing, as seen once in
    # CI (`238/3327/0`); most kills land in full batches. The table says how many did.
    interrupting = sum(returned >= 1 for returned in returned_by_kill)
    report.emit(
        "crash anywhere",
        capsys,
        seed=seed,
        kills=len(kills),
        kills_interrupting_work=interrupting,
        kills_returning_a_full_window=sum(r >= settings.prefetch for r in returned_by_kill),
        prefetch=settings.prefetch,
        processed_by_run_queued_and_returned_at_kill=",".join(kills),
        returned_by_kills=sum(returned_by_kill),
        last_publish_seconds_after_last_restart=round(max(published - last_restart, 0), 1),
        settled_seconds_after_last_restart=round(settled - last_restart, 1),
    )
    report.assert_ok()
    assert report.commands >= 5000 and report.sent > report.commands
    assert report.dead_lettered == 0 and report.lost == 0 and report.doubled == 0
    assert report.wrong == 0
    assert len(kills) == KILLS < DELIVERY_LIMIT
    assert interrupting > KILLS // 2, kills
    assert sum(returned_by_kill) >= KILLS, kills
