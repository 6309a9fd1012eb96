"""Poison is contained (contract guarantee 5): a command that always fails, or that kills the
worker every time it is taken, ends in `coupon.worker.dead` with its reason after the delivery
limit, while the commands sent behind it are all processed, each with one outcome."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.ledger import Expect, Ledger, _reason
from tests.support.worker_process import WorkerProcess

pytestmark = pytest.mark.faults

DELIVERY_LIMIT = 3
RAISING = "fault-poison-raise"
CRASHING = "fault-poison-crash"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """The test topology is declared with the same delivery limit as the workers' own."""
    return {"delivery_limit": DELIVERY_LIMIT}


async def _coupons_ready(ledger: Ledger, tag: str) -> None:
    """Create, through a running worker, the 10 coupons (2 uses each) that the redeems behind
    the poison use: their outcomes then do not depend on the order in which concurrent batches
    run (the contract orders nothing across batches), only on the counts."""
    creates = [(CreateCoupon(code=f"{tag}-{n}", init_count=2), None) for n in range(10)]
    await ledger.wait_for(*await ledger.send_many(creates))


def _behind(tag: str) -> list[Command]:
    """Valid commands to send behind a poison message: 10 new coupons, and 3 redeems of each of
    the 10 made ready before (2 redeemed, 1 Exhausted, whatever the order)."""
    creates: list[Command] = [CreateCoupon(code=f"{tag}-new-{n}", init_count=2) for n in range(10)]
    redeems: list[Command] = [RedeemCoupon(code=f"{tag}-{n % 10}") for n in range(30)]
    return creates + redeems


def sent_after(ledger: Ledger, message_id: str) -> list[str]:
    """The commands recorded after `message_id`, in the order they were sent."""
    sent = list(ledger.commands)
    return sent[sent.index(message_id) + 1 :]


def _start(start_worker: StartWorker, name: str = "worker") -> WorkerProcess:
    return start_worker(
        name=name,
        worker_delivery_limit=str(DELIVERY_LIMIT),
        worker_max_attempts="3",
        worker_fault_plan=f"handle:raise:{RAISING},handle:crash:{CRASHING}",
    )


async def _poison_then_valid(ledger: Ledger, poison: Command, tag: str) -> str:
    """Send the poison first, then the valid commands, so the valid ones queue behind it."""
    poison_id = await ledger.send(poison, expect=Expect.DEAD_LETTER)
    await ledger.send_many((command, None) for command in _behind(tag))
    return poison_id


@pytest.mark.timeout(120)
async def test_a_command_that_always_raises_is_dead_lettered_and_the_rest_flow(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Ledger(broker)
    await ledger.start()
    worker = _start(start_worker)
    await worker.wait_ready()
    tag = f"raise-{uuid.uuid4().hex[:6]}"
    await _coupons_ready(ledger, tag)
    poison_id = await _poison_then_valid(ledger, RedeemCoupon(code=RAISING), tag)
    ledger.commands[poison_id].error = "ProcessingFailed"
    behind = sent_after(ledger, poison_id)

    await ledger.wait_settled(within=60)
    dead = await broker.wait_dead_letters(1, within=30)
    report = await ledger.check(db, dead)
    reason = _reason(dead[0]) if dead else "-"
    report.emit(
        "poison: always raises",
        capsys,
        sent_behind_poison=len(behind),
        answered_behind_poison=sum(1 for m in behind if m in ledger.by_causation),
        worker_ready_logs=len(worker.events("worker_ready")),
        worker_running_at_end=worker.running(),
        poison_reason=reason,
    )

    assert worker.running(), "a raising command must not take the worker down"
    assert len(worker.events("worker_ready")) == 1, "the same process, never restarted"
    assert len(behind) == len(_behind(tag)) and all(m in ledger.by_causation for m in behind)
    assert [m.message_id for m in dead] == [poison_id]
    headers = dead[0].headers or {}
    assert reason == "ProcessingFailed"
    assert "InjectedFault" in str(headers.get("x-error-detail")), headers
    assert dead[0].body == RedeemCoupon(code=RAISING).model_dump_json().encode()
    assert report.outcomes == 50 and report.lost == 0 and report.doubled == 0
    assert report.outcome_kinds == {"created": 20, "redeemed": 20, "Exhausted": 10}
    assert len(worker.events("command_failed")) == 1
    report.assert_ok()


@pytest.mark.timeout(180)
async def test_a_command_that_always_crashes_the_worker_is_dead_lettered_and_the_rest_flow(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Ledger(broker)
    await ledger.start()
    tag = f"crash-{uuid.uuid4().hex[:6]}"
    setup = _start(start_worker, "setup")
    await setup.wait_ready()
    await _coupons_ready(ledger, tag)
    assert await setup.stop() == 0
    # Everything is queued before the first worker starts: the poison is the first command
    # any worker takes, with the valid ones right behind it in the same prefetch.
    poison_id = await _poison_then_valid(ledger, RedeemCoupon(code=CRASHING), tag)
    behind = sent_after(ledger, poison_id)

    crashes = 0
    worker = _start(start_worker, "worker-0")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while ledger.missing_outcomes() or await broker.depth(broker.topology.dead_queue) == 0:
        assert loop.time() < deadline, (
            f"not settled after {crashes} crashes: {len(ledger.missing_outcomes())} "
            "outcomes missing"
        )
        if not worker.running():
            assert worker.returncode == -9, worker.output[-3000:]  # killed by the fault
            crashes += 1
            assert crashes <= DELIVERY_LIMIT + 3, "the poison keeps crashing the worker"
            worker = _start(start_worker, f"worker-{crashes}")
        await asyncio.sleep(0.2)

    await ledger.wait_settled(within=30)
    dead = await broker.wait_dead_letters(1, within=30)
    # The last crash may be the one that dead-lettered the poison: count it, and start the
    # worker that must then run on without it.
    if not worker.running():
        assert worker.returncode == -9, worker.output[-3000:]
        crashes += 1
        worker = _start(start_worker, f"worker-{crashes}")
        await worker.wait_ready()
    # The worker running now, past the poison, takes new commands.
    await ledger.send(CreateCoupon(code=f"{tag}-after", init_count=1))
    await ledger.wait_settled(within=30)
    report = await ledger.check(db, dead)
    reason = _reason(dead[0]) if dead else "-"
    report.emit(
        "poison: always crashes",
        capsys,
        sent_behind_poison=len(behind),
        answered_behind_poison=sum(1 for m in behind if m in ledger.by_causation),
        crashes=crashes,
        delivery_limit=DELIVERY_LIMIT,
        poison_reason=reason,
    )

    assert [m.message_id for m in dead] == [poison_id]
    assert dead[0].body == RedeemCoupon(code=CRASHING).model_dump_json().encode()
    # Dead-lettered by the broker: the quorum queue's delivery limit, recorded in x-death.
    assert reason == "delivery_limit", dead[0].headers
    # The broker charges a delivery per crash and dead-letters past the limit.
    assert crashes == DELIVERY_LIMIT + 1
    assert report.outcomes == 51 and report.lost == 0 and report.doubled == 0
    assert report.outcome_kinds == {"created": 21, "redeemed": 20, "Exhausted": 10}
    report.assert_ok()
    assert worker.running(), "the last worker, past the poison, keeps running"
    assert await broker.depth(broker.topology.worker_queue) == 0
