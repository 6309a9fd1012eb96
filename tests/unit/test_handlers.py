"""Handlers on a batch's working set: every command's success and business-error outcome, in
arrival order, and the ids they derive."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contracts.commands import CreateCoupon, GetCoupon, RedeemCoupon
from contracts.events import CouponCreated, CouponError, CouponFound, CouponRedeemed, ErrorKind
from contracts.identity import COUPON_ID_NAMESPACE, EVENT_ID_NAMESPACE
from worker.app.outcomes import Outcome
from worker.domain.handlers import HANDLERS, handle
from worker.domain.model import Coupon
from worker.domain.working_set import WorkingSet

LOADED = Coupon(id=uuid.uuid4(), code="OLD", init_count=5, remaining_count=2)


def test_create_returns_coupon_created_with_an_id_derived_from_the_message_id() -> None:
    coupons = WorkingSet({})
    event = handle(CreateCoupon(code="SPRING", init_count=3), coupons, "m-1")
    assert isinstance(event, CouponCreated)
    assert (event.code, event.init_count, event.remaining_count) == ("SPRING", 3, 3)
    assert event.id == uuid.uuid5(COUPON_ID_NAMESPACE, "m-1")
    assert event.id.version == 5
    assert coupons.created == [Coupon(event.id, "SPRING", 3, 3)]
    assert coupons.taken == {}


def test_the_coupon_id_is_the_same_for_the_same_message_id_and_not_an_event_id() -> None:
    first = handle(CreateCoupon(code="A", init_count=1), WorkingSet({}), "m-1")
    again = handle(CreateCoupon(code="A", init_count=1), WorkingSet({}), "m-1")
    other = handle(CreateCoupon(code="A", init_count=1), WorkingSet({}), "m-2")
    assert isinstance(first, CouponCreated) and isinstance(again, CouponCreated)
    assert isinstance(other, CouponCreated)
    assert first.model_dump_json() == again.model_dump_json()
    assert first.id != other.id
    assert COUPON_ID_NAMESPACE != EVENT_ID_NAMESPACE
    assert str(first.id) != str(uuid.uuid5(EVENT_ID_NAMESPACE, "m-1"))


def test_a_duplicate_create_is_an_already_exists_outcome_and_keeps_the_first() -> None:
    coupons = WorkingSet({"OLD": LOADED})
    again = handle(CreateCoupon(code="OLD", init_count=9), coupons, "m-1")
    first = handle(CreateCoupon(code="NEW", init_count=3), coupons, "m-2")
    second = handle(CreateCoupon(code="NEW", init_count=9), coupons, "m-3")
    for event in (again, second):
        assert isinstance(event, CouponError)
        assert event.error is ErrorKind.ALREADY_EXISTS
        assert event.command == "coupon.create"
    assert isinstance(first, CouponCreated)
    assert coupons.get("NEW").init_count == 3
    assert coupons.get("OLD") == LOADED
    assert [c.code for c in coupons.created] == ["NEW"]


def test_redeems_are_granted_in_arrival_order_until_exhausted() -> None:
    coupons = WorkingSet({"OLD": LOADED})
    outcomes = [handle(RedeemCoupon(code="OLD"), coupons, f"r-{i}") for i in range(4)]
    first, second, third, fourth = outcomes
    assert isinstance(first, CouponRedeemed) and first.remaining_count == 1
    assert isinstance(second, CouponRedeemed) and second.remaining_count == 0
    assert first.id == second.id == LOADED.id
    for event in (third, fourth):
        assert isinstance(event, CouponError) and event.error is ErrorKind.EXHAUSTED
        assert (event.command, event.code) == ("coupon.redeem", "OLD")
    assert coupons.taken == {"OLD": 2}, "one guarded change for the whole batch"
    assert coupons.created == []


def test_a_coupon_created_in_the_batch_is_inserted_with_its_redeems_deducted() -> None:
    coupons = WorkingSet({})
    before = handle(RedeemCoupon(code="C"), coupons, "r-0")
    handle(CreateCoupon(code="C", init_count=2), coupons, "c")
    after = [handle(RedeemCoupon(code="C"), coupons, f"r-{i}") for i in (1, 2, 3)]
    assert isinstance(before, CouponError) and before.error is ErrorKind.DOES_NOT_EXIST
    assert [type(e) for e in after] == [CouponRedeemed, CouponRedeemed, CouponError]
    [created] = coupons.created
    assert (created.init_count, created.remaining_count) == (2, 0)
    assert coupons.taken == {}, "a new coupon is inserted as it stands, not updated"


def test_unknown_code_is_does_not_exist_for_redeem_and_get() -> None:
    coupons = WorkingSet({})
    redeem = handle(RedeemCoupon(code="NOPE"), coupons, "r")
    get = handle(GetCoupon(code="NOPE"), coupons, "g")
    assert isinstance(redeem, CouponError) and redeem.error is ErrorKind.DOES_NOT_EXIST
    assert isinstance(get, CouponError) and get.error is ErrorKind.DOES_NOT_EXIST
    assert (get.command, get.code) == ("coupon.get", "NOPE")
    assert "NOPE" in get.detail


def test_get_returns_coupon_found_as_the_batch_left_it_and_changes_nothing() -> None:
    coupons = WorkingSet({"OLD": LOADED})
    handle(RedeemCoupon(code="OLD"), coupons, "r")
    event = handle(GetCoupon(code="OLD"), coupons, "g")
    assert isinstance(event, CouponFound)
    assert event.routing_key == "coupon.found"
    assert (event.code, event.init_count, event.remaining_count) == ("OLD", 5, 1)
    assert coupons.taken == {"OLD": 1}


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
