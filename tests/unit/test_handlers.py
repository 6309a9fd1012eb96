"""Handlers on the in-memory fakes: every command's success and business-error outcome."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contracts.commands import CreateCoupon, GetCoupon, RedeemCoupon
from contracts.events import CouponCreated, CouponError, CouponFound, CouponRedeemed, ErrorKind
from tests.fakes import FakeDatabase, FakeUnitOfWork
from worker.app.outcomes import EVENT_ID_NAMESPACE, Outcome
from worker.domain.handlers import HANDLERS, handle


async def test_create_returns_coupon_created() -> None:
    async with FakeUnitOfWork(FakeDatabase()) as uow:
        event = await handle(CreateCoupon(code="SPRING", init_count=3), uow)
    assert isinstance(event, CouponCreated)
    assert (event.code, event.init_count, event.remaining_count) == ("SPRING", 3, 3)
    assert isinstance(event.id, uuid.UUID)


async def test_duplicate_create_is_an_already_exists_outcome() -> None:
    async with FakeUnitOfWork(FakeDatabase()) as uow:
        await handle(CreateCoupon(code="SPRING", init_count=3), uow)
        event = await handle(CreateCoupon(code="SPRING", init_count=9), uow)
        kept = await uow.coupons.get_by_code("SPRING")
    assert isinstance(event, CouponError)
    assert event.error is ErrorKind.ALREADY_EXISTS
    assert (event.command, event.code) == ("coupon.create", "SPRING")
    assert "SPRING" in event.detail
    assert kept.init_count == 3


async def test_redeem_to_exhaustion() -> None:
    async with FakeUnitOfWork(FakeDatabase()) as uow:
        created = await handle(CreateCoupon(code="C", init_count=2), uow)
        outcomes = [await handle(RedeemCoupon(code="C"), uow) for _ in range(3)]
    assert isinstance(created, CouponCreated)
    first, second, third = outcomes
    assert isinstance(first, CouponRedeemed) and first.remaining_count == 1
    assert isinstance(second, CouponRedeemed) and second.remaining_count == 0
    assert first.id == second.id == created.id
    assert isinstance(third, CouponError)
    assert third.error is ErrorKind.EXHAUSTED
    assert (third.command, third.code) == ("coupon.redeem", "C")


async def test_unknown_code_is_does_not_exist_for_redeem_and_get() -> None:
    async with FakeUnitOfWork(FakeDatabase()) as uow:
        redeem = await handle(RedeemCoupon(code="NOPE"), uow)
        get = await handle(GetCoupon(code="NOPE"), uow)
    assert isinstance(redeem, CouponError) and redeem.error is ErrorKind.DOES_NOT_EXIST
    assert isinstance(get, CouponError) and get.error is ErrorKind.DOES_NOT_EXIST
    assert (get.command, get.code) == ("coupon.get", "NOPE")


async def test_get_returns_coupon_found_and_changes_nothing() -> None:
    database = FakeDatabase()
    async with FakeUnitOfWork(database) as uow:
        await handle(CreateCoupon(code="G", init_count=5), uow)
        await handle(RedeemCoupon(code="G"), uow)
        await uow.commit()
    async with FakeUnitOfWork(database) as uow:
        event = await handle(GetCoupon(code="G"), uow)
        assert uow.coupons.staged == {}
    assert isinstance(event, CouponFound)
    assert event.routing_key == "coupon.found"
    assert (event.code, event.init_count, event.remaining_count) == ("G", 5, 4)


def test_every_command_has_a_handler() -> None:
    assert set(HANDLERS) == {CreateCoupon, RedeemCoupon, GetCoupon}


def _outcome(message_id: str) -> Outcome:
    return Outcome(
        command_message_id=message_id,
        command="coupon.create",
        routing_key="coupon.created",
        body=b"{}",
        occurred_at=datetime.now(UTC),
    )


def test_event_message_id_is_uuid5_of_the_command_message_id() -> None:
    command_id = str(uuid.uuid4())
    first, again = _outcome(command_id), _outcome(command_id)
    assert first.event_message_id == str(uuid.uuid5(EVENT_ID_NAMESPACE, command_id))
    assert first.event_message_id == again.event_message_id
    assert first.event_message_id != command_id
    assert first.event_message_id != _outcome(str(uuid.uuid4())).event_message_id
    assert uuid.UUID(first.event_message_id).version == 5
