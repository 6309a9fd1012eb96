"""`contracts.client.AmqpCouponClient` against a worker process, as a client service uses it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CouponCreated, CreateCoupon, names
from contracts.client import (
    AmqpCouponClient,
    CommandRejected,
    DoesNotExist,
    Exhausted,
    InvalidCommand,
    RequestTimeout,
    UnknownEvent,
    connect,
)
from contracts.validation import RejectionCode
from tests.conftest import StartWorker
from tests.e2e.observe import coupons, processed
from tests.support.broker import Broker
from tests.support.services import Services


@pytest.fixture
async def client(
    services: Services, prefix: str, broker: Broker
) -> AsyncIterator[AmqpCouponClient]:
    async with await connect(services.amqp_url, prefix) as client:
        yield client


async def test_a_timeout_is_typed_and_a_retry_with_the_same_id_applies_once(
    client: AmqpCouponClient, start_worker: StartWorker, db: AsyncEngine
) -> None:
    with pytest.raises(RequestTimeout) as timed_out:
        await client.create("TIMEOUT", 3, message_id="timeout-create", within=0.5)
    assert isinstance(timed_out.value, TimeoutError)
    assert timed_out.value.message_id == "timeout-create"

    worker = start_worker()
    await worker.wait_ready()
    # The command sent before is still queued; sending it again must not create twice.
    created = await client.create("TIMEOUT", 3, message_id="timeout-create", within=30)
    assert isinstance(created, CouponCreated) and created.remaining_count == 3
    assert await coupons(db) == {"TIMEOUT": (3, 3)}
    assert list(await processed(db)) == ["timeout-create"]


async def test_200_concurrent_requests_on_one_client(
    client: AmqpCouponClient, start_worker: StartWorker, db: AsyncEngine, broker: Broker
) -> None:
    worker = start_worker()
    await worker.wait_ready()
    await client.create("MANY", 150)

    async def redeem(n: int) -> str:
        try:
            await client.redeem("MANY", message_id=f"many-{n}", within=120)
        except Exhausted:
            return "Exhausted"
        return "redeemed"

    results = await asyncio.gather(*(redeem(n) for n in range(200)))
    assert results.count("redeemed") == 150 and results.count("Exhausted") == 50
    assert await coupons(db) == {"MANY": (150, 0)}
    assert client._pending == {}  # every request's future is gone once answered


async def test_invalid_and_unknown_outcomes_are_typed(
    client: AmqpCouponClient, start_worker: StartWorker
) -> None:
    worker = start_worker()
    await worker.wait_ready()
    # A command the model would refuse, built around its validation: the worker refuses it too.
    # (Sent through the client's request primitive: its typed verbs cannot build it.)
    bad = CreateCoupon.model_construct(code="no spaces allowed", init_count=1)
    received = await client._request(bad, message_id="bad-create", correlation_id=None, within=None)
    assert received.routing_key == names.INVALID
    with pytest.raises(InvalidCommand) as refused:
        from contracts.received import expect

        expect(received, CouponCreated, "bad-create")
    assert isinstance(refused.value, CommandRejected)
    assert refused.value.code is RejectionCode.INVALID_COMMAND
    assert "code" in refused.value.detail

    with pytest.raises(DoesNotExist) as missing:
        await client.redeem("NOWHERE")
    assert missing.value.event.code == "NOWHERE"

    with pytest.raises(ValueError, match="in flight"):
        await asyncio.gather(
            client.redeem("NOWHERE", correlation_id="same"),
            client.redeem("NOWHERE", correlation_id="same"),
        )


async def test_subscriptions_tolerate_unknown_fields_and_surface_unknown_types(
    client: AmqpCouponClient, broker: Broker
) -> None:
    exchange = await broker.ch.get_exchange(broker.topology.events_exchange, ensure=False)
    coupon_id = str(uuid.uuid4())
    future_body = {
        "id": coupon_id,
        "code": "NEWER",
        "init_count": 1,
        "remaining_count": 1,
        "campaign": "spring",  # a field a newer worker might add
    }
    async with client.subscribe(["coupon.#"]) as events:
        for routing_key, body in (
            ("coupon.created", json.dumps(future_body).encode()),
            ("coupon.refunded", b'{"id": "x"}'),
            ("coupon.redeemed", b'{"id": "not a uuid"}'),
        ):
            await exchange.publish(
                aio_pika.Message(body, message_id=str(uuid.uuid4()), type=routing_key),
                routing_key,
            )
        received = []
        async for event in events:
            received.append(event)
            if len(received) == 3:
                break
    created, refunded, broken = (r.event for r in received)
    assert isinstance(created, CouponCreated) and str(created.id) == coupon_id
    assert isinstance(refunded, UnknownEvent) and "unknown event type" in refunded.reason
    assert isinstance(broken, UnknownEvent) and "not a valid coupon.redeemed" in broken.reason


async def test_a_bare_async_for_that_raises_returns_its_event_to_a_durable_queue(
    client: AmqpCouponClient, broker: Broker, start_worker: StartWorker
) -> None:
    worker = start_worker()
    await worker.wait_ready()
    queue = f"{broker.topology.prefix}client.billing"
    async with client.subscribe(["coupon.created"], queue=queue):
        pass  # declares and binds the subscriber's queue (and its dead-letter queue)
    await client.create("BARE", 1)

    async def handle_one_and_fail() -> None:
        async for _ in client.subscribe(["coupon.created"], queue=queue):
            raise RuntimeError("billing is down")

    with pytest.raises(RuntimeError):
        await handle_one_and_fail()
    again = []
    for _ in range(100):  # the generator's finalizer closes the channel: soon, not at once
        message = await (await broker.ch.get_queue(queue, ensure=False)).get(fail=False)
        if message is not None:
            await message.ack()
            again.append(message)
            break
        await asyncio.sleep(0.1)
    assert [m.redelivered for m in again] == [True]
    await broker.ch.queue_delete(queue)
    await broker.ch.queue_delete(f"{queue}.dead")
