"""The worker as a separate process, driven only through the broker as a client would."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, GetCoupon, RedeemCoupon
from contracts.events import CouponCreated, CouponError, CouponFound, CouponRedeemed, ErrorKind
from tests.conftest import StartWorker
from tests.support.broker import Broker
from worker.db import tables


async def test_create_redeem_to_exhaustion_and_errors(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine
) -> None:
    events = await broker.collect_events()
    worker = start_worker()
    await worker.wait_ready()

    create_id = await broker.send(CreateCoupon(code="SPRING-1", init_count=2))
    await events.wait_for(1)
    created = events.events[0]
    assert isinstance(created.event, CouponCreated)
    assert (created.event.code, created.event.init_count, created.event.remaining_count) == (
        "SPRING-1",
        2,
        2,
    )
    assert created.correlation_id == create_id and created.causation_id == create_id
    assert created.message_id not in (None, create_id)

    await broker.send(CreateCoupon(code="SPRING-1", init_count=5))
    for _ in range(3):
        await broker.send(RedeemCoupon(code="SPRING-1"))
    await broker.send(RedeemCoupon(code="NO-SUCH"))
    await events.wait_for(6)
    await events.wait_quiet()  # and no seventh: no command answered twice
    assert len(events.messages) == 6
    outcomes = [e.event for e in events.events[1:]]
    errors = sorted(str(e.error) for e in outcomes if isinstance(e, CouponError))
    redeemed = sorted(e.remaining_count for e in outcomes if isinstance(e, CouponRedeemed))
    assert redeemed == [0, 1]
    assert errors == ["AlreadyExists", "DoesNotExist", "Exhausted"]

    async with db.connect() as connection:
        remaining = await connection.scalar(
            select(tables.coupon.c.remaining_count).where(tables.coupon.c.code == "SPRING-1")
        )
        processed = await connection.scalar(
            select(func.count()).select_from(tables.processed_command)
        )
    assert remaining == 0
    assert processed == 6


async def test_get_answers_on_reply_to_only(broker: Broker, start_worker: StartWorker) -> None:
    events = await broker.collect_events()
    worker = start_worker()
    await worker.wait_ready()
    reply_to, replies = await broker.reply_queue()
    await broker.send(CreateCoupon(code="GET-1", init_count=7), reply_to=reply_to)
    # Commands are processed concurrently: only an outcome orders what comes after it.
    await replies.wait_for(1)
    get_id = await broker.send(GetCoupon(code="GET-1"), reply_to=reply_to, correlation_id="corr-1")
    await broker.send(GetCoupon(code="GET-404"), reply_to=reply_to)
    await replies.wait_for(3)
    assert len(await replies.wait_quiet()) == 3
    by_type = {m.type: m for m in replies.messages}
    found = replies.events[[m.type for m in replies.messages].index("coupon.found")]
    assert isinstance(found.event, CouponFound)
    assert found.event.remaining_count == 7 and found.correlation_id == "corr-1"
    assert found.causation_id == get_id
    missing = [e.event for e in replies.events if isinstance(e.event, CouponError)]
    assert [m.error for m in missing] == [ErrorKind.DOES_NOT_EXIST]
    assert set(by_type) == {"coupon.created", "coupon.found", "coupon.error"}
    await events.wait_for(1)
    await events.wait_quiet()
    # The gets went to reply_to only: the events exchange saw just the create.
    assert [m.routing_key for m in events.messages] == ["coupon.created"]
