"""Guarantee 6, end to end: a stop with commands in flight loses nothing and dead-letters
nothing; the next worker finishes the job, and every command has exactly one outcome."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.e2e.observe import Published, coupons, flush, outcomes, processed, wait_caused
from tests.support.broker import Broker

GRACE_PERIOD = 10.0
SHORT_GRACE_PERIOD = 0.5
# Interpreter exit and connection close, after the grace period proper.
EXIT_SLACK = 5.0
REDEEMS = 150
CREATES = 150
STOCK = 1000


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("signum", "grace_period", "stuck"),
    [
        (signal.SIGTERM, GRACE_PERIOD, False),
        (signal.SIGINT, GRACE_PERIOD, False),
        # Too short to finish, and stuck behind a row lock the test holds: what is in flight
        # is returned to the queue, not lost and not dead-lettered.
        (signal.SIGTERM, SHORT_GRACE_PERIOD, True),
    ],
    ids=["SIGTERM", "SIGINT", "SIGTERM-short-grace"],
)
async def test_stop_with_commands_in_flight_loses_nothing(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    signum: signal.Signals,
    grace_period: float,
    stuck: bool,
) -> None:
    events = await broker.collect_events()
    first = start_worker(name="first", worker_grace_period=str(grace_period))
    await first.wait_ready()
    setup = await broker.send(CreateCoupon(code="STOCK", init_count=STOCK))
    await wait_caused(events, [setup])

    commands: list[Command] = [RedeemCoupon(code="STOCK")] * REDEEMS + [
        CreateCoupon(code=f"NEW-{i}", init_count=1) for i in range(CREATES)
    ]
    random.Random(6).shuffle(commands)
    async with contextlib.AsyncExitStack() as held:
        if stuck:
            await held.enter_async_context(row_locked(db, "STOCK"))
        sending = asyncio.gather(*(broker.send(command) for command in commands))
        if stuck:
            # Signal once the worker holds deliveries it cannot finish.
            sent_early = await sending
            await worker_took_some(broker, len(sent_early))
        else:
            # Stop as soon as the worker is visibly working on the burst.
            await events.wait_for(2, what="the first outcome of the burst")
        answered_at_signal = len(events.messages) - 1
        signalled = time.monotonic()
        first.signal(signum)

        async def exit_status() -> tuple[int, float]:
            status = await first.wait_exit(grace_period + EXIT_SLACK + 5)
            return status, time.monotonic() - signalled

        (status, stopped_after), sent = await asyncio.gather(exit_status(), sending)
        # Counted by the broker before anything is released: every command the first worker
        # did not answer is back in the queue (none dropped, none held by a stopped worker).
        await flush(broker, events)
        back_in_queue = await broker.depth(broker.topology.worker_queue)
    assert status == 0
    assert stopped_after < grace_period + EXIT_SLACK, stopped_after
    [stopped] = first.events("worker_stopped")
    await flush(broker, events)
    done_by_first = len({Published.of(m).causation_id for m in outcomes(events)}) - 1
    # Every command the first worker did not answer is back in the queue; beyond those, only
    # what it returned after publishing (answered again, identically, by the next worker).
    returned = int(stopped["returned"])
    assert len(sent) - done_by_first <= back_in_queue <= len(sent) - done_by_first + returned
    if stuck:
        # Something was in flight and could not finish: it was returned, and is in the queue.
        assert returned >= 1
        assert back_in_queue >= returned
    # A stop returns what it did not finish; it dead-letters nothing.
    assert await broker.depth(broker.topology.dead_queue) == 0
    print(  # noqa: T201
        f"\n{signum.name}: {answered_at_signal} answered when signalled; first worker "
        f"answered {done_by_first}/{len(sent)} commands in all, "
        f"returned {stopped['returned']} in flight, {back_in_queue} back in the queue, "
        f"exited 0 after {stopped_after:.2f}s"
    )

    second = start_worker(name="second")
    await second.wait_ready()
    await wait_caused(events, sent, within=60)
    assert await second.stop() == 0
    await flush(broker, events)

    # Exactly one outcome per command (published once, or again identically after a return).
    by_command: dict[object, set[Published]] = {}
    for message in outcomes(events):
        published = Published.of(message)
        by_command.setdefault(published.causation_id, set()).add(published)
    assert set(by_command) == {setup, *sent}
    assert {cause for cause, versions in by_command.items() if len(versions) != 1} == set()
    republished = len(outcomes(events)) - len(by_command)
    print(  # noqa: T201
        f"{signum.name}: {republished} outcomes published twice (same message_id and body)"
    )

    answers = [next(iter(by_command[message_id])) for message_id in sent]
    redeemed = sorted(a.json()["remaining_count"] for a in answers if a.type == "coupon.redeemed")
    assert redeemed == list(range(STOCK - REDEEMS, STOCK))
    assert sum(a.type == "coupon.created" for a in answers) == CREATES
    state = await coupons(db)
    assert state.pop("STOCK") == (STOCK, STOCK - REDEEMS)
    assert state == {f"NEW-{i}": (1, 1) for i in range(CREATES)}
    assert set(await processed(db)) == {setup, *sent}
    assert await broker.dead_letters() == []


@contextlib.asynccontextmanager
async def row_locked(db: AsyncEngine, code: str) -> AsyncIterator[None]:
    """Hold the coupon's row lock: redeems of it wait until the block ends."""
    async with db.connect() as blocker, blocker.begin():
        await blocker.execute(
            text("SELECT 1 FROM coupon WHERE code = :code FOR UPDATE"), {"code": code}
        )
        yield


async def worker_took_some(broker: Broker, sent: int, within: float = 30.0) -> None:
    """Until the worker has taken deliveries out of the queue (it holds them now)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await broker.depth(broker.topology.worker_queue) >= sent:
        assert loop.time() < deadline, "the worker took nothing"
        await asyncio.sleep(0.1)
