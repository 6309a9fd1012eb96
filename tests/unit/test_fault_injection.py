"""The fault-injection decorators on the in-memory fakes: each point fires where it says, and
only for the codes the transaction handled."""

from __future__ import annotations

import pytest

from contracts.commands import CreateCoupon
from tests.fakes import FakeDatabase, FakeUnitOfWork
from worker.app.pipeline import Envelope, Pipeline
from worker.domain.handlers import handle
from worker.testing.faults import FaultPlan, InjectedFault
from worker.testing.injection import FaultInjection


def faulty_pipeline(database: FakeDatabase, plan: str) -> Pipeline:
    injection = FaultInjection(FaultPlan.parse(plan))
    return Pipeline(
        injection.unit_of_work(lambda: FakeUnitOfWork(database)), injection.handle(handle)
    )


BATCH = [
    Envelope("a", CreateCoupon(code="fault-a", init_count=1)),
    Envelope("b", CreateCoupon(code="other", init_count=1)),
]


@pytest.mark.parametrize(
    ("point", "committed"), [("handle", False), ("before_commit", False), ("after_commit", True)]
)
async def test_each_point_fires_on_its_side_of_the_commit(point: str, committed: bool) -> None:
    database = FakeDatabase()
    with pytest.raises(InjectedFault, match="fault-a"):
        await faulty_pipeline(database, f"{point}:raise:fault-a").process(BATCH)
    assert (database.commits == 1) is committed
    assert bool(database.coupons) is committed


async def test_a_command_answered_from_its_stored_outcome_reaches_no_commit_point() -> None:
    database = FakeDatabase()
    [first] = await Pipeline(lambda: FakeUnitOfWork(database)).process(BATCH[:1])
    faulty = faulty_pipeline(database, "before_commit:raise:fault-a,after_commit:raise:fault-a")
    assert await faulty.process(BATCH[:1]) == [first]


async def test_a_plan_for_other_codes_changes_nothing() -> None:
    database = FakeDatabase()
    outcomes = await faulty_pipeline(database, "handle:raise:fault-z").process(BATCH)
    assert [o.routing_key for o in outcomes] == ["coupon.created", "coupon.created"]
    assert set(database.coupons) == {"fault-a", "other"}
