"""The pipeline on the real unit of work: one transaction per batch, one effect per message_id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import CreateCoupon, GetCoupon, RedeemCoupon
from contracts.identity import coupon_id
from tests.support.batches import (
    NOW,
    batches,
    envelopes,
    expected_outcomes,
    observed,
    one_by_one,
    wire,
)
from tests.support.database import truncate
from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.pipeline import Envelope, Pipeline
from worker.db import tables
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.domain.handlers import handle
from worker.domain.model import Coupon
from worker.testing.faults import FaultPlan, InjectedFault
from worker.testing.injection import FaultInjection


async def remaining(engine: AsyncEngine, code: str) -> int | None:
    async with engine.connect() as connection:
        value = await connection.scalar(
            select(tables.coupon.c.remaining_count).where(tables.coupon.c.code == code)
        )
    return None if value is None else int(value)


async def processed_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            await connection.scalar(select(func.count()).select_from(tables.processed_command)) or 0
        )


async def test_a_mixed_batch_in_one_transaction(db: AsyncEngine) -> None:
    pipeline = Pipeline(lambda: SqlAlchemyUnitOfWork(db))
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


async def test_a_fault_before_commit_leaves_nothing(db: AsyncEngine) -> None:
    faults = FaultInjection(FaultPlan.parse("before_commit:raise:fault-x"))
    pipeline = Pipeline(
        faults.unit_of_work(lambda: SqlAlchemyUnitOfWork(db)), faults.handle(handle)
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


class GatedUnitOfWork(SqlAlchemyUnitOfWork):
    """Looks up stored outcomes (and locks what exists), then waits: another delivery
    overtakes it right there."""

    def __init__(self, engine: AsyncEngine, looked_up: asyncio.Event, gate: asyncio.Event) -> None:
        super().__init__(engine)
        self.looked_up = looked_up
        self.gate = gate

    async def load_batch(
        self, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        found = await super().load_batch(message_ids, codes)
        self.looked_up.set()
        await asyncio.wait_for(self.gate.wait(), 30)
        return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "command",
    [CreateCoupon(code="TWICE", init_count=5), RedeemCoupon(code="NEVER-MADE")],
    ids=["create: the code is taken", "refused redeem: only the record conflicts"],
)
async def test_two_deliveries_of_one_command_apply_it_once(
    db: AsyncEngine, command: CreateCoupon | RedeemCoupon
) -> None:
    plain = Pipeline(lambda: SqlAlchemyUnitOfWork(db))
    looked_up, gate = asyncio.Event(), asyncio.Event()
    late = Pipeline(lambda: GatedUnitOfWork(db, looked_up, gate))
    twice = [Envelope("twice-1", command)]

    # The late delivery finds no stored outcome (and no coupon to lock), then the other
    # delivery commits first.
    overtaken = asyncio.create_task(late.process(twice))
    await asyncio.wait_for(looked_up.wait(), 30)
    [first] = await plain.process(twice)
    gate.set()
    with pytest.raises(TransactionConflict):
        await asyncio.wait_for(overtaken, 30)
    assert await processed_count(db) == 1, "the late delivery's record must roll back"

    # Retried, it is answered from the stored outcome with the same event message_id.
    looked_up.clear()
    [retried] = await late.process(twice)
    assert retried == first
    assert retried.event_message_id == first.event_message_id
    assert await processed_count(db) == 1
    expected = 5 if isinstance(command, CreateCoupon) else None
    assert await remaining(db, command.code) == expected


def _on_fresh_database(db: AsyncEngine) -> Callable[[], Awaitable[Pipeline]]:
    async def fresh() -> Pipeline:
        await truncate(db)
        return Pipeline(lambda: SqlAlchemyUnitOfWork(db), clock=lambda: NOW)

    return fresh


async def committed_state(engine: AsyncEngine) -> tuple[list[tuple[Any, ...]], list[str]]:
    async with engine.connect() as connection:
        coupons = await connection.execute(
            select(
                tables.coupon.c.id,
                tables.coupon.c.code,
                tables.coupon.c.init_count,
                tables.coupon.c.remaining_count,
            ).order_by(tables.coupon.c.code)
        )
        commands = await connection.scalars(
            select(tables.processed_command.c.message_id).order_by(
                tables.processed_command.c.message_id
            )
        )
        return [tuple(row) for row in coupons.all()], list(commands.all())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=st.lists(envelopes, max_size=8), batch=batches)
async def test_a_batch_has_exactly_the_outcomes_of_its_commands_applied_one_by_one(
    db: AsyncEngine, history: list[Envelope], batch: list[Envelope]
) -> None:
    fresh = _on_fresh_database(db)
    at_once = await fresh()
    await one_by_one(at_once, history)
    outcomes = await at_once.process(batch)
    state_at_once = await committed_state(db)

    reference = await fresh()
    await one_by_one(reference, history)
    assert wire(outcomes) == wire(await one_by_one(reference, batch))
    assert [observed(o) for o in outcomes] == expected_outcomes(history, batch)
    assert state_at_once == await committed_state(db)


async def test_the_same_commands_on_a_fresh_database_give_byte_identical_outcomes(
    db: AsyncEngine,
) -> None:
    batch = [
        Envelope("c-1", CreateCoupon(code="DET", init_count=3)),
        Envelope("r-1", RedeemCoupon(code="DET")),
        Envelope("c-2", CreateCoupon(code="DET", init_count=9)),
        Envelope("g-1", GetCoupon(code="DET")),
        Envelope("r-2", RedeemCoupon(code="NOPE")),
    ]
    fresh = _on_fresh_database(db)
    first = await (await fresh()).process(batch)
    again = await (await fresh()).process(batch)
    assert wire(first) == wire(again)
    created = json.loads(first[0].body)
    assert created["id"] == str(coupon_id("c-1"))
    assert json.loads(first[1].body)["id"] == created["id"]
    # Redelivered, the stored outcome comes back byte for byte as well.
    assert wire(await (await fresh()).process(batch[:1])) == wire(first[:1])


@pytest.mark.parametrize("size", [1, 10, 120])
async def test_a_batch_costs_four_round_trips_whatever_its_size(db: AsyncEngine, size: int) -> None:
    pipeline = Pipeline(lambda: SqlAlchemyUnitOfWork(db))
    await pipeline.process(
        [Envelope(f"old-{i}", CreateCoupon(code=f"OLD-{i}", init_count=5)) for i in range(size)]
    )
    batch = [
        *(Envelope(f"new-{i}", CreateCoupon(code=f"NEW-{i}", init_count=2)) for i in range(size)),
        *(Envelope(f"r-{i}", RedeemCoupon(code=f"OLD-{i}")) for i in range(size)),
        *(Envelope(f"hot-{i}", RedeemCoupon(code="OLD-0")) for i in range(size)),
        *(Envelope(f"g-{i}", GetCoupon(code=f"NEW-{i}")) for i in range(size)),
    ]
    with executions(db) as sent:
        outcomes = await pipeline.process(batch)
    assert len(outcomes) == 4 * size
    # BEGIN; stored outcomes with the coupons locked; new coupons, redemptions and outcome
    # rows in one statement; COMMIT.
    begin, load, write, commit = sent
    assert (begin, commit) == ("BEGIN", "COMMIT"), sent
    assert load.startswith("WITH locked AS (SELECT") and "FOR UPDATE" in load, load
    assert "FROM processed_command" in load, load
    for writes in ("INSERT INTO coupon ", "UPDATE coupon SET", "INSERT INTO processed_command"):
        assert writes in write, write
    granted = [o for o in outcomes[2 * size :][:size] if o.routing_key == "coupon.redeemed"]
    assert len(granted) == min(size, 4), "the hot coupon grants as many as remain"


@contextmanager
def executions(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL (and the BEGIN and COMMIT) the engine sends while the block runs."""
    seen: list[str] = []

    def statement(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split()))

    def begin(*args: Any) -> None:
        seen.append("BEGIN")

    def commit(*args: Any) -> None:
        seen.append("COMMIT")

    event.listen(engine.sync_engine, "begin", begin)
    event.listen(engine.sync_engine, "before_cursor_execute", statement)
    event.listen(engine.sync_engine, "commit", commit)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "begin", begin)
        event.remove(engine.sync_engine, "before_cursor_execute", statement)
        event.remove(engine.sync_engine, "commit", commit)
