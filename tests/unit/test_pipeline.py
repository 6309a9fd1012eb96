"""The pipeline on the in-memory fakes: dedupe, batching, reads, and the recording conflict."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.commands import Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.identity import coupon_id
from tests.fakes import FakeDatabase, FakeUnitOfWork
from tests.support.batches import (
    NOW,
    batches,
    envelopes,
    expected_outcomes,
    observed,
    one_by_one,
    wire,
)
from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.pipeline import Envelope, Pipeline
from worker.domain.handlers import handle
from worker.testing.faults import FaultPlan, FaultPoint, InjectedFault
from worker.testing.injection import FaultInjection


def pipeline(database: FakeDatabase, faults: FaultPlan | None = None) -> Pipeline:
    if faults is None:
        return Pipeline(lambda: FakeUnitOfWork(database), clock=lambda: NOW)
    injection = FaultInjection(faults)
    return Pipeline(
        injection.unit_of_work(lambda: FakeUnitOfWork(database)),
        injection.handle(handle),
        clock=lambda: NOW,
    )


def envelope(message_id: str, command: Command) -> Envelope:
    return Envelope(message_id=message_id, command=command)


async def test_a_batch_yields_one_outcome_per_command_in_order_and_commits_once() -> None:
    database = FakeDatabase()
    outcomes = await pipeline(database).process(
        [
            envelope("m1", CreateCoupon(code="A", init_count=2)),
            envelope("m2", RedeemCoupon(code="A")),
            envelope("m3", CreateCoupon(code="A", init_count=7)),
            envelope("m4", RedeemCoupon(code="NOPE")),
        ]
    )
    assert [o.command_message_id for o in outcomes] == ["m1", "m2", "m3", "m4"]
    assert [o.routing_key for o in outcomes] == [
        "coupon.created",
        "coupon.redeemed",
        "coupon.error",
        "coupon.error",
    ]
    assert [o.command for o in outcomes] == [
        "coupon.create",
        "coupon.redeem",
        "coupon.create",
        "coupon.redeem",
    ]
    assert json.loads(outcomes[2].body)["error"] == "AlreadyExists"
    assert json.loads(outcomes[3].body)["error"] == "DoesNotExist"
    assert all(o.occurred_at == NOW and o.broadcast for o in outcomes)
    assert database.commits == 1
    assert database.coupons["A"].remaining_count == 1
    # Business errors are outcomes too: they are recorded, so a redelivery answers the same.
    assert set(database.processed) == {"m1", "m2", "m3", "m4"}


async def test_a_redelivered_command_is_answered_from_its_stored_outcome() -> None:
    database = FakeDatabase()
    worker = pipeline(database)
    await worker.process([envelope("c", CreateCoupon(code="A", init_count=5))])
    [first] = await worker.process([envelope("r", RedeemCoupon(code="A"))])
    await worker.process([envelope("r2", RedeemCoupon(code="A"))])
    assert database.coupons["A"].remaining_count == 3

    [again] = await worker.process([envelope("r", RedeemCoupon(code="A"))])
    assert database.coupons["A"].remaining_count == 3, "applied twice"
    assert again == first  # the stored body (remaining 4), not a fresh redeem
    assert json.loads(again.body)["remaining_count"] == 4
    assert again.event_message_id == first.event_message_id


async def test_the_same_message_id_twice_in_one_batch_is_applied_once() -> None:
    database = FakeDatabase()
    await pipeline(database).process([envelope("c", CreateCoupon(code="A", init_count=5))])
    first, second = await pipeline(database).process(
        [envelope("r", RedeemCoupon(code="A")), envelope("r", RedeemCoupon(code="A"))]
    )
    assert first == second
    assert database.coupons["A"].remaining_count == 4


async def test_gets_are_answered_fresh_and_never_recorded() -> None:
    database = FakeDatabase()
    worker = pipeline(database)
    await worker.process([envelope("c", CreateCoupon(code="A", init_count=5))])
    [found] = await worker.process([envelope("g", GetCoupon(code="A"))])
    await worker.process([envelope("r", RedeemCoupon(code="A"))])
    [found_again] = await worker.process([envelope("g", GetCoupon(code="A"))])
    assert found.routing_key == found_again.routing_key == "coupon.found"
    assert not found.broadcast and not found_again.broadcast
    assert json.loads(found.body)["remaining_count"] == 5
    assert json.loads(found_again.body)["remaining_count"] == 4
    assert "g" not in database.processed
    [missing] = await worker.process([envelope("g404", GetCoupon(code="NOPE"))])
    assert json.loads(missing.body)["error"] == "DoesNotExist"
    assert "g404" not in database.processed


async def test_a_failure_anywhere_in_the_batch_commits_nothing() -> None:
    database = FakeDatabase()
    faults = FaultPlan.parse("handle:raise:fault-b")
    with pytest.raises(InjectedFault):
        await pipeline(database, faults).process(
            [
                envelope("a", CreateCoupon(code="fault-a", init_count=1)),
                envelope("b", CreateCoupon(code="fault-b", init_count=1)),
            ]
        )
    assert database.coupons == {} and database.processed == {}
    assert database.commits == 0


class ConcurrentDelivery(FaultPlan):
    """While our handler runs, another worker commits the same command first."""

    def __init__(self, database: FakeDatabase, message_id: str) -> None:
        super().__init__()
        self.database = database
        self.message_id = message_id
        self.stored: Outcome | None = None

    def hit(self, point: FaultPoint, codes: Iterable[str]) -> None:
        if point is FaultPoint.HANDLE and self.stored is None:
            self.stored = Outcome(
                command_message_id=self.message_id,
                command="coupon.create",
                routing_key="coupon.created",
                body=b'{"by": "the other worker"}',
                occurred_at=NOW,
            )
            self.database.processed[self.message_id] = self.stored


async def test_a_concurrent_delivery_that_committed_first_rolls_the_batch_back() -> None:
    database = FakeDatabase()
    interleave = ConcurrentDelivery(database, "dup")
    batch = [
        envelope("other", CreateCoupon(code="B", init_count=1)),
        envelope("dup", CreateCoupon(code="A", init_count=1)),
    ]
    with pytest.raises(TransactionConflict):
        await pipeline(database, interleave).process(batch)
    assert database.coupons == {}, "the losing batch must not commit its effects"
    assert set(database.processed) == {"dup"}

    # The retry answers `dup` from the winner's outcome and applies only the rest.
    outcomes = await pipeline(database, interleave).process(batch)
    assert outcomes[1] == interleave.stored
    assert set(database.coupons) == {"B"}
    assert set(database.processed) == {"dup", "other"}


@settings(max_examples=300, deadline=None)
@given(history=st.lists(envelopes, max_size=12), batch=batches)
async def test_a_batch_has_exactly_the_outcomes_of_its_commands_applied_one_by_one(
    history: list[Envelope], batch: list[Envelope]
) -> None:
    at_once_database, reference_database = FakeDatabase(), FakeDatabase()
    at_once, reference = pipeline(at_once_database), pipeline(reference_database)
    await one_by_one(at_once, history)
    await one_by_one(reference, history)

    outcomes = await at_once.process(batch)

    assert wire(outcomes) == wire(await one_by_one(reference, batch))
    assert [observed(o) for o in outcomes] == expected_outcomes(history, batch)
    assert at_once_database.coupons == reference_database.coupons
    assert at_once_database.processed.keys() == reference_database.processed.keys()


async def test_the_same_command_on_a_fresh_database_gives_byte_identical_outcomes() -> None:
    batch = [
        envelope("c", CreateCoupon(code="A", init_count=2)),
        envelope("r", RedeemCoupon(code="A")),
        envelope("g", GetCoupon(code="A")),
    ]
    first = await pipeline(FakeDatabase()).process(batch)
    again = await pipeline(FakeDatabase()).process(batch)
    assert wire(first) == wire(again)
    assert json.loads(first[0].body)["id"] == str(coupon_id("c"))
