"""The pipeline on both storages (the `storage` fixture: the in-memory fakes, then PostgreSQL).

One transaction per batch, one effect per `message_id`, reads answered fresh and never
recorded, nothing committed when anything fails, and every batch answered exactly as its
commands applied one by one - with the answers the oracle (tests/support/oracle.py) works out
from the commands alone. The last test is PostgreSQL's own: what a batch costs in statements.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.commands import COMMANDS, Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.identity import coupon_id
from tests.support.oracle import CASES, Answer, Step, answers
from tests.support.storage import Storage
from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.pipeline import Envelope, Pipeline
from worker.app.ports import ForwardingUnitOfWork, UnitOfWork
from worker.db.unit_of_work import SqlAlchemyUnitOfWork
from worker.domain.handlers import handle
from worker.domain.model import Coupon
from worker.testing.faults import FaultPlan, InjectedFault
from worker.testing.injection import FaultInjection

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def pipeline(storage: Storage, faults: str = "") -> Pipeline:
    """As the worker builds it: on PostgreSQL, a batch of one through the optimistic unit of
    work first."""
    lone = storage.lone_unit_of_work
    if not faults:
        return Pipeline(storage.unit_of_work, clock=lambda: NOW, lone_unit_of_work=lone)
    injection = FaultInjection(FaultPlan.parse(faults))
    return Pipeline(
        injection.unit_of_work(storage.unit_of_work),
        injection.handle(handle),
        clock=lambda: NOW,
        lone_unit_of_work=None if lone is None else injection.unit_of_work(lone),
    )


def step(envelope: Envelope) -> Step:
    return Step(envelope.message_id, envelope.command.routing_key, envelope.command.model_dump())


def envelope(step: Step) -> Envelope:
    return Envelope(step.message_id, COMMANDS[step.routing_key].model_validate(step.fields))


def said(outcome: Outcome) -> Answer:
    return Answer.of(outcome.routing_key, outcome.body)


async def one_by_one(pipeline: Pipeline, batch: Sequence[Envelope]) -> list[Outcome]:
    return [outcome for envelope in batch for outcome in await pipeline.process([envelope])]


def wire(outcomes: Sequence[Outcome]) -> list[tuple[str, str, str, bytes]]:
    """What a consumer sees of each outcome: byte for byte, with the event's message_id."""
    return [(o.command_message_id, o.event_message_id, o.routing_key, o.body) for o in outcomes]


async def test_a_batch_is_one_transaction_with_one_outcome_per_command_in_order(
    storage: Storage,
) -> None:
    commits = storage.commits()
    outcomes = await pipeline(storage).process(
        [
            Envelope("c1", CreateCoupon(code="B1", init_count=1)),
            Envelope("c2", CreateCoupon(code="B1", init_count=5)),  # same batch, same code
            Envelope("r1", RedeemCoupon(code="B1")),
            Envelope("r2", RedeemCoupon(code="B1")),
            Envelope("g1", GetCoupon(code="B1")),  # sees the batch's own changes
            Envelope("r3", RedeemCoupon(code="NOPE")),
        ]
    )
    assert [o.command_message_id for o in outcomes] == ["c1", "c2", "r1", "r2", "g1", "r3"]
    assert [said(o) for o in outcomes] == [
        Answer("coupon.created", "B1", remaining_count=1),
        Answer("coupon.error", "B1", "AlreadyExists"),
        Answer("coupon.redeemed", "B1", remaining_count=0),
        Answer("coupon.error", "B1", "Exhausted"),
        Answer("coupon.found", "B1", remaining_count=0),
        Answer("coupon.error", "NOPE", "DoesNotExist"),
    ]
    assert [o.command for o in outcomes] == [
        *["coupon.create"] * 2,
        *["coupon.redeem"] * 2,
        "coupon.get",
        "coupon.redeem",
    ]
    assert all(o.occurred_at == NOW for o in outcomes)
    assert [o.broadcast for o in outcomes] == [True] * 4 + [False, True]
    assert storage.commits() - commits == 1
    assert (await storage.committed_coupons())["B1"].remaining_count == 0
    # Business errors are outcomes too: they are recorded, so a redelivery answers the same.
    assert await storage.committed_commands() == {"c1", "c2", "r1", "r2", "r3"}


async def test_one_effect_per_message_id_within_a_batch_and_across_batches(
    storage: Storage,
) -> None:
    worker = pipeline(storage)
    await worker.process([Envelope("c", CreateCoupon(code="A", init_count=5))])
    [first] = await worker.process([Envelope("r", RedeemCoupon(code="A"))])
    await worker.process([Envelope("r2", RedeemCoupon(code="A"))])

    [again] = await worker.process([Envelope("r", RedeemCoupon(code="A"))])
    assert (await storage.committed_coupons())["A"].remaining_count == 3, "applied twice"
    assert again == first  # the stored body (remaining 4), not a fresh redeem
    assert json.loads(again.body)["remaining_count"] == 4
    assert again.event_message_id == first.event_message_id

    twice = await worker.process([Envelope("r3", RedeemCoupon(code="A"))] * 2)
    assert twice[0] == twice[1]
    assert (await storage.committed_coupons())["A"].remaining_count == 2


async def test_reads_are_answered_fresh_and_never_recorded(storage: Storage) -> None:
    worker = pipeline(storage)
    await worker.process([Envelope("c", CreateCoupon(code="A", init_count=5))])
    [found] = await worker.process([Envelope("g", GetCoupon(code="A"))])
    await worker.process([Envelope("r", RedeemCoupon(code="A"))])
    [found_again] = await worker.process([Envelope("g", GetCoupon(code="A"))])
    assert found.routing_key == found_again.routing_key == "coupon.found"
    assert not found.broadcast and not found_again.broadcast
    assert json.loads(found.body)["remaining_count"] == 5
    assert json.loads(found_again.body)["remaining_count"] == 4
    [missing] = await worker.process([Envelope("g404", GetCoupon(code="NOPE"))])
    assert json.loads(missing.body)["error"] == "DoesNotExist"
    assert await storage.committed_commands() == {"c", "r"}


@pytest.mark.parametrize("point", ["handle", "before_commit"])
async def test_a_failure_anywhere_in_the_batch_commits_nothing(
    storage: Storage, point: str
) -> None:
    commits = storage.commits()
    with pytest.raises(InjectedFault):
        await pipeline(storage, f"{point}:raise:fault-b").process(
            [
                Envelope("a", CreateCoupon(code="fault-a", init_count=1)),
                Envelope("b", CreateCoupon(code="fault-b", init_count=1)),
            ]
        )
    assert await storage.committed_coupons() == {}
    assert await storage.committed_commands() == set()
    assert storage.commits() == commits


class Overtaken(ForwardingUnitOfWork):
    """A unit of work that, once its batch is loaded (stored outcomes looked up, coupons
    locked), waits at `gate`: another delivery overtakes it right there."""

    def __init__(self, inner: UnitOfWork, looked_up: asyncio.Event, gate: asyncio.Event) -> None:
        super().__init__(inner)
        self._looked_up, self._gate = looked_up, gate

    async def load_batch(
        self, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        found = await super().load_batch(message_ids, codes)
        self._looked_up.set()
        await asyncio.wait_for(self._gate.wait(), 30)
        return found


@pytest.mark.timeout(60)
async def test_a_concurrent_delivery_that_committed_first_rolls_the_batch_back(
    storage: Storage,
) -> None:
    # The overtaking command needs no row the late batch holds locked (a batch locks the
    # coupons it names as it loads them): a create of a code that does not exist yet.
    plain = pipeline(storage)
    looked_up, gate = asyncio.Event(), asyncio.Event()
    late = Pipeline(lambda: Overtaken(storage.unit_of_work(), looked_up, gate), clock=lambda: NOW)
    batch = [
        Envelope("other", CreateCoupon(code="OTHER", init_count=1)),
        Envelope("dup", CreateCoupon(code="TWICE", init_count=5)),
    ]

    # The late delivery finds no stored outcome for `dup`, then another one commits it first.
    overtaken = asyncio.create_task(late.process(batch))
    await asyncio.wait_for(looked_up.wait(), 30)
    [first] = await plain.process(batch[1:])
    gate.set()
    with pytest.raises(TransactionConflict):
        await asyncio.wait_for(overtaken, 30)
    coupons = await storage.committed_coupons()
    assert set(coupons) == {"TWICE"}, "the losing batch must not commit its effects"
    assert await storage.committed_commands() == {"dup"}

    # The retry answers `dup` from the winner's outcome and applies only the rest.
    outcomes = await late.process(batch)
    assert outcomes[1] == first
    assert outcomes[1].event_message_id == first.event_message_id
    coupons = await storage.committed_coupons()
    assert (set(coupons), coupons["TWICE"].remaining_count) == ({"TWICE", "OTHER"}, 5)
    assert await storage.committed_commands() == {"dup", "other"}


async def test_every_oracle_case_one_by_one_and_as_one_batch(storage: Storage) -> None:
    for routing_key, case in CASES.items():
        batch = [envelope(step) for step, _ in case]
        for together in (False, True):
            await storage.empty()
            worker = pipeline(storage)
            outcomes = await (worker.process(batch) if together else one_by_one(worker, batch))
            assert [said(o) for o in outcomes] == [answer for _, answer in case], (
                routing_key,
                "as one batch" if together else "one by one",
            )


async def test_the_same_commands_on_a_fresh_database_give_byte_identical_outcomes(
    storage: Storage,
) -> None:
    batch = [
        Envelope("c-1", CreateCoupon(code="DET", init_count=3)),
        Envelope("r-1", RedeemCoupon(code="DET")),
        Envelope("c-2", CreateCoupon(code="DET", init_count=9)),
        Envelope("g-1", GetCoupon(code="DET")),
        Envelope("r-2", RedeemCoupon(code="NOPE")),
    ]
    first = await pipeline(storage).process(batch)
    await storage.empty()
    again = await pipeline(storage).process(batch)
    assert wire(first) == wire(again)
    created = json.loads(first[0].body)
    assert created["id"] == str(coupon_id("c-1"))
    assert json.loads(first[1].body)["id"] == created["id"]
    # Redelivered, the stored outcome comes back byte for byte as well.
    assert wire(await pipeline(storage).process(batch[:1])) == wire(first[:1])


# --- any batch: at once exactly as one by one, and as the oracle says ------------------------

_codes = st.sampled_from(["A", "B", "C"])
_values: dict[str, st.SearchStrategy[Any]] = {"code": _codes, "init_count": st.integers(1, 3)}


def _any(command: type[Command]) -> st.SearchStrategy[Command]:
    return st.builds(command, **{name: _values[name] for name in command.model_fields})


_commands = st.one_of(
    *(_any(command) for command in COMMANDS.values()),
    _any(RedeemCoupon),  # redeems twice as likely: hot coupons run out
)
# A small pool of message ids, so that duplicates (redeliveries) occur in and across batches.
envelopes = st.builds(
    Envelope, message_id=st.sampled_from([f"m{i}" for i in range(12)]), command=_commands
)
batches = st.lists(envelopes, min_size=1, max_size=30)
_PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def a_batch_is_its_commands_one_by_one(
    storage: Storage, history: list[Envelope], batch: list[Envelope]
) -> None:
    await storage.empty()
    at_once = pipeline(storage)
    await one_by_one(at_once, history)
    outcomes = await at_once.process(batch)
    state_at_once = (await storage.committed_coupons(), await storage.committed_commands())

    await storage.empty()
    reference = pipeline(storage)
    await one_by_one(reference, history)
    assert wire(outcomes) == wire(await one_by_one(reference, batch))
    oracle = answers([step(e) for e in history], [step(e) for e in batch])
    assert [said(o) for o in outcomes] == oracle
    assert state_at_once == (await storage.committed_coupons(), await storage.committed_commands())


# One property, two budgets: examples on the fakes cost microseconds, on PostgreSQL a truncate.
@pytest.mark.parametrize("storage", ["fake"], indirect=True)
@settings(_PROPERTY, max_examples=300)
@given(history=st.lists(envelopes, max_size=12), batch=batches)
async def test_a_batch_has_exactly_the_outcomes_of_its_commands_one_by_one_on_the_fakes(
    storage: Storage, history: list[Envelope], batch: list[Envelope]
) -> None:
    await a_batch_is_its_commands_one_by_one(storage, history, batch)


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
@settings(_PROPERTY, max_examples=40)
@given(history=st.lists(envelopes, max_size=8), batch=batches)
async def test_a_batch_has_exactly_the_outcomes_of_its_commands_one_by_one_on_postgresql(
    storage: Storage, history: list[Envelope], batch: list[Envelope]
) -> None:
    await a_batch_is_its_commands_one_by_one(storage, history, batch)


# --- PostgreSQL's own -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 10, 120])
async def test_a_batch_costs_the_same_statements_whatever_its_size(
    db: AsyncEngine, size: int
) -> None:
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
