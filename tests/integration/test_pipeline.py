"""The pipeline on the real unit of work: one transaction per batch, one effect per message_id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Self

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts.commands import CreateCoupon, GetCoupon, RedeemCoupon
from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.pipeline import Envelope, Pipeline
from worker.db.repositories import ProcessedCommandsRepository
from worker.db.tables import Coupon, ProcessedCommand
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.domain.handlers import handle
from worker.testing.faults import FaultPlan, InjectedFault
from worker.testing.injection import FaultInjection

Sessions = async_sessionmaker[AsyncSession]


async def remaining(engine: AsyncEngine, code: str) -> int | None:
    async with engine.connect() as connection:
        value = await connection.scalar(select(Coupon.remaining_count).where(Coupon.code == code))
    return None if value is None else int(value)


async def processed_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(ProcessedCommand)) or 0)


async def test_a_mixed_batch_in_one_transaction(sessions: Sessions, db: AsyncEngine) -> None:
    pipeline = Pipeline(lambda: SqlAlchemyUnitOfWork(sessions))
    outcomes = await pipeline.process(
        [
            Envelope("c1", CreateCoupon(code="B1", init_count=1)),
            Envelope("c2", CreateCoupon(code="B1", init_count=5)),  # same batch, same code
            Envelope("r1", RedeemCoupon(code="B1")),
            Envelope("r2", RedeemCoupon(code="B1")),
            Envelope("g1", GetCoupon(code="B1")),
        ]
    )
    bodies = [json.loads(o.body) for o in outcomes]
    assert [o.routing_key for o in outcomes] == [
        "coupon.created",
        "coupon.error",
        "coupon.redeemed",
        "coupon.error",
        "coupon.found",
    ]
    assert (bodies[1]["error"], bodies[3]["error"]) == ("AlreadyExists", "Exhausted")
    assert bodies[4]["remaining_count"] == 0
    assert await remaining(db, "B1") == 0
    assert await processed_count(db) == 4, "the get is not recorded"

    again = await pipeline.process([Envelope("r1", RedeemCoupon(code="B1"))])
    assert again == [outcomes[2]]
    assert await remaining(db, "B1") == 0


async def test_a_fault_before_commit_leaves_nothing(sessions: Sessions, db: AsyncEngine) -> None:
    faults = FaultInjection(FaultPlan.parse("before_commit:raise:fault-x"))
    pipeline = Pipeline(
        faults.unit_of_work(lambda: SqlAlchemyUnitOfWork(sessions)), faults.handle(handle)
    )
    with pytest.raises(InjectedFault):
        await pipeline.process(
            [
                Envelope("a", CreateCoupon(code="fault-ok", init_count=1)),
                Envelope("b", CreateCoupon(code="fault-x", init_count=1)),
            ]
        )
    assert await remaining(db, "fault-ok") is None
    assert await processed_count(db) == 0


class GatedProcessed(ProcessedCommandsRepository):
    """Looks up stored outcomes, then waits: another delivery overtakes it right there."""

    def __init__(
        self, session: AsyncSession, looked_up: asyncio.Event, gate: asyncio.Event
    ) -> None:
        super().__init__(session)
        self.looked_up = looked_up
        self.gate = gate

    async def outcomes(self, message_ids: Sequence[str]) -> dict[str, Outcome]:
        found = await super().outcomes(message_ids)
        self.looked_up.set()
        await asyncio.wait_for(self.gate.wait(), 30)
        return found


class GatedUnitOfWork(SqlAlchemyUnitOfWork):
    def __init__(self, sessions: Sessions, looked_up: asyncio.Event, gate: asyncio.Event) -> None:
        super().__init__(sessions)
        self.looked_up = looked_up
        self.gate = gate

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.processed = GatedProcessed(self.coupons.session, self.looked_up, self.gate)
        return self


@pytest.mark.timeout(60)
async def test_two_deliveries_of_one_command_apply_it_once(
    sessions: Sessions, db: AsyncEngine
) -> None:
    plain = Pipeline(lambda: SqlAlchemyUnitOfWork(sessions))
    await plain.process([Envelope("create", CreateCoupon(code="TWICE", init_count=5))])
    looked_up, gate = asyncio.Event(), asyncio.Event()
    late = Pipeline(lambda: GatedUnitOfWork(sessions, looked_up, gate))
    redeem = [Envelope("redeem-1", RedeemCoupon(code="TWICE"))]

    # The late delivery finds no stored outcome, then the other delivery commits first.
    overtaken = asyncio.create_task(late.process(redeem))
    await asyncio.wait_for(looked_up.wait(), 30)
    [first] = await plain.process(redeem)
    gate.set()
    with pytest.raises(TransactionConflict):
        await asyncio.wait_for(overtaken, 30)
    assert await remaining(db, "TWICE") == 4, "the late delivery's effect must roll back"

    # Retried, it is answered from the stored outcome with the same event message_id.
    [retried] = await late.process(redeem)
    assert retried == first
    assert retried.event_message_id == first.event_message_id
    assert await remaining(db, "TWICE") == 4
