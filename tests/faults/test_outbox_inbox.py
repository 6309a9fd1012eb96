"""Exactly once across services: the example checkout service's outbox and inbox, with its relay
and its consumer SIGKILLed at random moments of the stream's progress.

Processes, all real: the worker; the checkout (`python -m example_checkout orders`, from
tests/example_service) writing orders in bursts, each order and its coupon's redeem in one
transaction, every 7th payment declined after the redeem was staged (that order and its redeem
roll back); the relay (`coupon-contracts relay`, run as `python -m contracts relay`); the tally
(`python -m example_checkout tally`) counting `coupon.redeemed` per code through the inbox, from
a durable queue of its own (a quorum queue with a delivery limit, dead letters to
`<queue>.dead`). The relay and the tally are killed 6 times each, in random order, at random
points of the stream's progress (outcome events received), and restarted.

Each kill must interrupt work, or it proves nothing:
- the relay is frozen (SIGSTOP) until ≥ 3 batches are staged behind it, then thawed; once an
  outcome of its next publishes arrives it is killed, in the middle of its batches: what it
  published and had not marked sent yet is published again by the next relay;
- the tally is frozen until events wait in its queue, thawed until it has counted more than its
  prefetch window (so that what the next kill returns is mostly not what this one returned: the
  queue's delivery limit counts returns, and must not park an event), frozen again with the
  relay (so the queue holds still), and killed: the broker returns what it held unacknowledged,
  and the queue's depth grows by exactly that many.
The checkout writes at a fixed pace, so it is frozen while a kill is carried out and its victim
replaced: on a slow machine the kills would otherwise outlast the orders, and a tally frozen
after the last one waits for events that never come (what failed the reliability run of
0c16fc6).

Then, from the databases and the broker: every committed order has exactly one outcome (the
ledger, tests/support/ledger.py, judges the worker's database and the events against the orders
the checkout database holds); no outcome, and no effect, for an order that did not commit; every
`coupon.redeemed` counted exactly once by the tally (per code, and its inbox holds exactly those
event ids); nothing left staged or parked; nothing dead-lettered, by the worker or by the
tally's queue.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import CreateCoupon, RedeemCoupon, names
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.database import create_database, drop_database
from tests.support.ledger import Ledger
from tests.support.queue_depth import depth_once_returned, steady_depth
from tests.support.services import Services
from tests.support.worker_process import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "tests" / "example_service"
KILLS = 6  # of each
ORDERS = 1500
DECLINED_EVERY = 7
CODES = [f"fx-{n}" for n in range(6)]
COUPON_COUNT = 180  # 1,285 committed orders over 6 codes: the last ~200 are Exhausted
RELAY_BATCH = 20
TALLY_QUEUE = "checkout.redemptions"
PAST_PREFETCH = 33  # the subscription's prefetch is 32


@pytest.fixture
async def checkout_database(services: Services) -> AsyncIterator[str]:
    url = await create_database(services.database_url, prefix="coupon_checkout")
    yield url
    await drop_database(services.database_url, url)


async def count(engine: AsyncEngine, query: str) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text(query))).scalar() or 0)


async def wait_until(
    what: str,
    condition: Callable[..., Awaitable[bool]],
    *args: Any,
    within: float = 30.0,
    every: float = 0.01,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition(*args):
        assert loop.time() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(every)


async def test_killed_relays_and_consumers_lose_and_double_nothing(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    services: Services,
    prefix: str,
    checkout_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    print(f"outbox and inbox: seed={seed} (rerun with FAULT_SEED={seed})")  # noqa: T201
    rng = random.Random(seed)
    started = time.monotonic()
    checkout = create_async_engine(checkout_database)
    processes: list[WorkerProcess] = []

    def start(name: str, *command: str, cwd: Path = EXAMPLE) -> WorkerProcess:
        env = {
            "CHECKOUT_DATABASE_URL": checkout_database,
            "COUPON_AMQP_URL": services.amqp_url,
            "COUPON_PREFIX": prefix,
            "COUPON_RELAY_DATABASE_URL": checkout_database,
        }
        process = WorkerProcess(env, name, command=command, cwd=cwd).start()
        processes.append(process)
        return process

    def start_relay(n: int) -> WorkerProcess:
        options = ("--poll-interval", "0.05", "--batch-size", str(RELAY_BATCH))
        return start(
            f"relay-{n}", "-m", "contracts", "--prefix", prefix, "relay", *options, cwd=ROOT
        )

    tally_queue = f"{prefix}{TALLY_QUEUE}"

    async def start_tally(n: int) -> WorkerProcess:
        tally = start(f"tally-{n}", "-m", "example_checkout", "tally", "--queue", TALLY_QUEUE)

        async def consuming() -> bool:
            try:
                return await broker.consumers(tally_queue) == 1
            except Exception:  # not declared yet
                return False

        await wait_until(f"{tally.name} consuming", consuming, within=60, every=0.1)
        return tally

    try:
        setup = start("setup", "-m", "example_checkout", "setup")
        assert await setup.wait_exit(within=60) == 0, setup.output
        ledger = Ledger(broker)
        await ledger.start()
        worker = start_worker()
        await worker.wait_ready()
        await ledger.send_many((CreateCoupon(code=c, init_count=COUPON_COUNT), None) for c in CODES)
        await ledger.wait_outcomes(within=60)
        tally = await start_tally(0)
        relay = start_relay(0)
        writer = start(
            "checkout",
            "-m",
            "example_checkout",
            "orders",
            str(ORDERS),
            "--codes",
            ",".join(CODES),
            "--burst",
            "30",
            "--pause",
            "0.6",
            "--declined-every",
            str(DECLINED_EVERY),
        )

        unsent = "SELECT count(*) FROM coupon_outbox WHERE sent_at IS NULL"
        tallied = "SELECT count(*) FROM coupon_inbox"
        committed = ORDERS - len(range(0, ORDERS, DECLINED_EVERY))
        victims = ["relay"] * KILLS + ["tally"] * KILLS
        rng.shuffle(victims)
        start_events = ledger.received()
        moments = sorted(rng.sample(range(committed // 20, committed * 60 // 100), 2 * KILLS))
        relay_kills: list[str] = []
        tally_kills: list[str] = []
        returned_by_tally_kills = 0
        for kill, (victim, moment) in enumerate(zip(victims, moments, strict=True)):
            await ledger.wait_received(start_events + moment, within=120)
            if victim == "relay":
                relay.signal(signal.SIGSTOP)
                await wait_until("a backlog", _at_least, checkout, unsent, 3 * RELAY_BATCH)
                backlog = await count(checkout, unsent)
                before = ledger.received()
                relay.signal(signal.SIGCONT)
                await wait_until("the relay publishing", _more, ledger, before, every=0.002)
                relay.signal(signal.SIGKILL)
                with frozen(writer):
                    assert await relay.wait_exit(within=30) == -signal.SIGKILL
                    relay_kills.append(f"{backlog}/{await count(checkout, unsent)}")
                    relay = start_relay(kill + 1)
            else:
                tally.signal(signal.SIGSTOP)
                await wait_until("events waiting", _depth_at_least, broker, tally_queue, 40)
                with frozen(writer):
                    counted = await count(checkout, tallied)
                    tally.signal(signal.SIGCONT)
                    await wait_until(
                        "counting", _at_least, checkout, tallied, counted + PAST_PREFETCH
                    )
                    tally.signal(signal.SIGSTOP)
                    with frozen(relay):  # no more events: the queue's depth holds still
                        queued = await steady_depth(broker, tally_queue)
                        tally.signal(signal.SIGKILL)
                        assert await tally.wait_exit(within=30) == -signal.SIGKILL
                        returned = await depth_once_returned(broker, tally_queue) - queued
                    returned_by_tally_kills += returned
                    tally_kills.append(f"{counted}/{queued}/{returned}")
                    tally = await start_tally(kill + 1)
        last_kill = time.monotonic()
        assert await writer.wait_exit(within=180) == 0, writer.output[-2000:]

        # The orders that committed are the commands that must have been sent, once each.
        async with checkout.connect() as connection:
            orders = (
                await connection.execute(text("SELECT id, coupon_code FROM checkout_order"))
            ).all()
            staged = set(
                (await connection.execute(text("SELECT message_id FROM coupon_outbox"))).scalars()
            )
        assert len(orders) == committed
        assert staged == {f"order-{order.id}" for order in orders}  # declined: not even staged
        for order in orders:
            body = RedeemCoupon(code=order.coupon_code).model_dump_json().encode()
            ledger.record(f"order-{order.id}", names.REDEEM, body, established=True)
        await ledger.wait_outcomes(within=120)
        settled = time.monotonic()
        await wait_until("all sent", _none, checkout, unsent, within=60)
        redeemed = {
            copy.message_id: copy for copy in ledger.copies if copy.routing_key == names.REDEEMED
        }
        await wait_until("all tallied", _at_least, checkout, tallied, len(redeemed), within=60)
        await ledger.wait_settled(within=30, quiet=1.0)
        assert await worker.stop(within=60) == 0
        assert await relay.stop(within=30) == 0
        await asyncio.sleep(1.0)  # the tally's last acknowledgements
        tally.kill()

        report = await ledger.check(db)
        async with checkout.connect() as connection:
            rows = await connection.execute(text("SELECT code, count FROM checkout_redemptions"))
            tally_by_code = {str(code): int(n) for code, n in rows}
            inbox_ids = set(
                (await connection.execute(text("SELECT message_id FROM coupon_inbox"))).scalars()
            )
            parked = await count(
                checkout, "SELECT count(*) FROM coupon_outbox WHERE parked_at IS NOT NULL"
            )
        redeemed = {
            copy.message_id: copy for copy in ledger.copies if copy.routing_key == names.REDEEMED
        }
        redeemed_by_code = Counter(
            RedeemCoupon.model_validate_json(ledger.commands[c.causation_id].body).code
            for c in redeemed.values()
            if c.causation_id in ledger.commands
        )
        seen_before = sum(
            line.count("redemption_seen_before") for p in processes for line in p.lines
        )
        tally_queue_left = await broker.depth(tally_queue)
        tally_dead_letters = len(await broker.drain_queue(f"{tally_queue}.dead"))
        report.emit(
            "outbox and inbox",
            capsys,
            seed=seed,
            orders=ORDERS,
            orders_committed=len(orders),
            orders_declined=ORDERS - len(orders),
            relay_kills=len(relay_kills),
            relay_backlog_at_thaw_and_unsent_after_kill=",".join(relay_kills),
            tally_kills=len(tally_kills),
            tally_counted_queued_returned_at_kill=",".join(tally_kills),
            returned_by_tally_kills=returned_by_tally_kills,
            redeemed_events=len(redeemed),
            tallied=sum(tally_by_code.values()),
            inbox_ids=len(inbox_ids),
            repeats_skipped_by_inbox=seen_before,
            parked=parked,
            tally_queue_left=tally_queue_left,
            tally_dead_lettered=tally_dead_letters,
            settled_seconds_after_last_kill=round(settled - last_kill, 1),
            seconds=round(time.monotonic() - started, 1),
        )
        report.assert_ok()
        assert report.lost == 0 and report.doubled == 0 and report.wrong == 0
        assert report.dead_lettered == 0
        assert report.commands == len(orders) + len(CODES) == report.outcomes
        # Every redemption counted once: per code, and by event id.
        assert tally_by_code == dict(redeemed_by_code)
        assert inbox_ids == set(redeemed)
        assert parked == 0 and tally_queue_left == 0 and tally_dead_letters == 0
        assert len(relay_kills) == len(tally_kills) == KILLS
        # The kills interrupted work: killed relays left published commands unmarked (published
        # again: the worker answered with the stored outcome, extra copies of one event), and
        # killed tallies left events unacknowledged (returned to the queue).
        assert report.duplicates >= 1 and returned_by_tally_kills >= KILLS
    finally:
        for process in processes:
            process.kill()
        await checkout.dispose()
        for queue in (tally_queue, f"{tally_queue}.dead"):
            await broker.ch.queue_delete(queue)


@contextmanager
def frozen(process: WorkerProcess) -> Iterator[None]:
    """Hold `process` still (SIGSTOP) for the block, and let it go on after, whatever happens.

    The checkout writes its orders at a fixed pace; it is frozen while a kill is carried out and
    its process replaced, so that the kills, however slow the machine, all fall while orders are
    still being written (a tally frozen after the last order would wait for events that never
    come).
    """
    process.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.signal(signal.SIGCONT)


async def _at_least(engine: AsyncEngine, query: str, least: int) -> bool:
    return await count(engine, query) >= least


async def _none(engine: AsyncEngine, query: str) -> bool:
    return await count(engine, query) == 0


async def _more(ledger: Ledger, than: int) -> bool:
    return ledger.received() > than


async def _depth_at_least(broker: Broker, queue: str, least: int) -> bool:
    return await broker.depth(queue) >= least
