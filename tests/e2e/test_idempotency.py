"""Guarantee 1, end to end: one effect per message_id, the same outcome every time it is asked."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.e2e.observe import (
    Published,
    caused_by,
    coupons,
    flush,
    outcomes,
    processed,
    wait_caused,
)
from tests.support.broker import Broker, Collected


def new_id() -> str:
    return str(uuid.uuid4())


async def twice_in_sequence(
    broker: Broker, events: Collected, command: Command
) -> tuple[Published, Published]:
    """Send `command`, wait for its outcome, send it again under the same message_id."""
    message_id = await broker.send(command)
    await wait_caused(events, [message_id])
    await broker.send(command, message_id=message_id)
    await wait_caused(events, [message_id], count=2)
    first, second = caused_by(events, message_id)
    return first, second


@pytest.mark.timeout(60)
async def test_same_message_id_after_its_outcome_has_one_effect(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine
) -> None:
    events = await broker.collect_events()
    worker = start_worker()
    await worker.wait_ready()

    # A create, sent again: the second is answered from the stored outcome, not AlreadyExists.
    first, again = await twice_in_sequence(broker, events, CreateCoupon(code="ONCE", init_count=3))
    assert first == again
    assert first.type == "coupon.created" and first.json()["remaining_count"] == 3

    # A redeem, sent again: one decrement, the same remaining_count reported twice.
    first, again = await twice_in_sequence(broker, events, RedeemCoupon(code="ONCE"))
    assert first == again
    assert first.type == "coupon.redeemed" and first.json()["remaining_count"] == 2

    # A business error, sent again: AlreadyExists both times, and the coupon untouched.
    first, again = await twice_in_sequence(broker, events, CreateCoupon(code="ONCE", init_count=9))
    assert first == again
    assert first.type == "coupon.error" and first.json()["error"] == "AlreadyExists"

    # A business error whose answer would now differ if it were recomputed: the stored
    # DoesNotExist is what the client gets again, and the coupon created since is untouched.
    late_redeem = await broker.send(RedeemCoupon(code="LATE"))
    await wait_caused(events, [late_redeem])
    late_create = await broker.send(CreateCoupon(code="LATE", init_count=4))
    await wait_caused(events, [late_create])
    await broker.send(RedeemCoupon(code="LATE"), message_id=late_redeem)
    await wait_caused(events, [late_redeem], count=2)
    first, again = caused_by(events, late_redeem)
    assert first == again
    assert first.type == "coupon.error" and first.json()["error"] == "DoesNotExist"

    assert await worker.stop() == 0
    await flush(broker, events)
    # Exactly two publications per command sent twice, one for the create of LATE.
    per_command: dict[object, set[str | None]] = {}
    for published in map(Published.of, outcomes(events)):
        per_command.setdefault(published.causation_id, set()).add(published.message_id)
    assert len(outcomes(events)) == 2 * 4 + 1
    # One event message_id per command, and never the command's own.
    assert all(len(ids) == 1 for ids in per_command.values())
    assert all(cause not in ids for cause, ids in per_command.items())

    assert await coupons(db) == {"ONCE": (3, 2), "LATE": (4, 4)}
    stored = await processed(db)
    assert len(stored) == 5
    assert sorted(stored.values()) == [
        "coupon.created",
        "coupon.created",
        "coupon.error",
        "coupon.error",
        "coupon.redeemed",
    ]
    assert await broker.dead_letters() == []


@pytest.mark.timeout(60)
async def test_same_message_id_twice_in_one_burst_has_one_effect(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine
) -> None:
    events = await broker.collect_events()
    worker = start_worker()
    await worker.wait_ready()
    setup = await broker.send(CreateCoupon(code="BURST", init_count=5))
    await wait_caused(events, [setup])

    commands: dict[str, Command] = {
        new_id(): CreateCoupon(code="FRESH", init_count=2),
        new_id(): RedeemCoupon(code="BURST"),
        new_id(): CreateCoupon(code="BURST", init_count=7),  # AlreadyExists
        new_id(): RedeemCoupon(code="NOPE"),  # DoesNotExist
    }
    # Both copies of every command go out concurrently, interleaved with the others.
    await asyncio.gather(
        *(
            broker.send(command, message_id=message_id)
            for _ in range(2)
            for message_id, command in commands.items()
        )
    )
    await wait_caused(events, list(commands), count=2)

    assert await worker.stop() == 0
    await flush(broker, events)
    results = {}
    for message_id in commands:
        published = caused_by(events, message_id)
        assert len(published) == 2, published
        assert published[0] == published[1]
        results[message_id] = published[0]
    kinds = sorted((p.type or "", p.json().get("error", "")) for p in results.values())
    assert kinds == [
        ("coupon.created", ""),
        ("coupon.error", "AlreadyExists"),
        ("coupon.error", "DoesNotExist"),
        ("coupon.redeemed", ""),
    ]
    assert await coupons(db) == {"BURST": (5, 4), "FRESH": (2, 2)}
    assert set(await processed(db)) == {setup, *commands}
    assert await broker.dead_letters() == []


@pytest.mark.timeout(90)
async def test_a_restarted_worker_answers_from_the_stored_outcome(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine
) -> None:
    events = await broker.collect_events()
    first_worker = start_worker(name="first")
    await first_worker.wait_ready()
    create = await broker.send(CreateCoupon(code="KEEP", init_count=3))
    await wait_caused(events, [create])
    redeem = await broker.send(RedeemCoupon(code="KEEP"))
    await wait_caused(events, [redeem])
    assert await first_worker.stop() == 0
    assert await coupons(db) == {"KEEP": (3, 2)}

    second_worker = start_worker(name="second")
    await second_worker.wait_ready()
    await broker.send(CreateCoupon(code="KEEP", init_count=3), message_id=create)
    await broker.send(RedeemCoupon(code="KEEP"), message_id=redeem)
    await wait_caused(events, [create, redeem], count=2)
    assert await second_worker.stop() == 0
    await flush(broker, events)

    for message_id, kind, remaining in (
        (create, "coupon.created", 3),
        (redeem, "coupon.redeemed", 2),
    ):
        before, after = caused_by(events, message_id)
        assert before == after
        assert before.type == kind and before.json()["remaining_count"] == remaining
    assert await coupons(db) == {"KEEP": (3, 2)}
    assert set(await processed(db)) == {create, redeem}
