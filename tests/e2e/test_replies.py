"""Outcome properties and replies, end to end: what a client sees on the events exchange, on its
own reply queue, and on RabbitMQ's direct reply-to."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, GetCoupon, RedeemCoupon, command_message, names
from contracts.amqp import to_amqp
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.e2e.observe import Published, coupons, wait_caused
from tests.support.broker import Broker, Collected

# AMQP timestamps have whole seconds; the worker and the tests share this machine's clock.
CLOCK_SLACK = timedelta(seconds=2)


async def test_event_properties_and_correlation_id(
    broker: Broker, start_worker: StartWorker
) -> None:
    events = await broker.collect_events()
    reply_to, replies = await broker.reply_queue()
    worker = start_worker()
    await worker.wait_ready()
    started = datetime.now(UTC)

    plain = await broker.send(CreateCoupon(code="PROPS", init_count=2), reply_to=reply_to)
    correlated = await broker.send(
        RedeemCoupon(code="NO-SUCH"), reply_to=reply_to, correlation_id="order-42"
    )
    await wait_caused(events, [plain, correlated])
    await replies.wait_for(2)
    finished = datetime.now(UTC)

    event_of = {Published.of(m).causation_id: m for m in events.messages}
    reply_of = {Published.of(m).causation_id: m for m in replies.messages}
    # correlation_id defaults to the command's message_id, and is copied when given.
    assert event_of[plain].correlation_id == plain
    assert event_of[correlated].correlation_id == "order-42"

    for command_id, routing_key in ((plain, "coupon.created"), (correlated, "coupon.error")):
        event = event_of[command_id]
        assert event.routing_key == routing_key
        assert event.type == routing_key
        assert event.content_type == names.JSON_CONTENT_TYPE
        assert event.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert event.timestamp is not None
        stamped = event.timestamp.replace(tzinfo=event.timestamp.tzinfo or UTC)
        assert started - CLOCK_SLACK <= stamped <= finished + CLOCK_SLACK
        assert (event.headers or {}).get(names.CAUSATION_ID_HEADER) == command_id
        assert event.message_id is not None and event.message_id != command_id
        uuid.UUID(event.message_id)
        # The reply is the event itself: same body, same properties.
        assert Published.of(reply_of[command_id]) == Published.of(event)
    # The whole body, the human-readable detail included, written out here: outcomes are
    # deterministic (contract, "Determinism"), so its wording changes only on purpose.
    assert json.loads(event_of[correlated].body) == {
        "error": "DoesNotExist",
        "detail": "coupon 'NO-SUCH' does not exist",
        "command": "coupon.redeem",
        "code": "NO-SUCH",
    }


async def test_direct_reply_to_answers_get_create_and_invalid(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine
) -> None:
    """RabbitMQ's `amq.rabbitmq.reply-to`: consumed without acks on the channel that publishes."""
    worker = start_worker()
    await worker.wait_ready()
    assert broker.connection is not None
    channel = await broker.connection.channel(publisher_confirms=True)
    replies = Collected()

    async def on_reply(message: AbstractIncomingMessage) -> None:
        replies.add(message)

    pseudo_queue = await channel.get_queue(names.DIRECT_REPLY_TO, ensure=False)
    await pseudo_queue.consume(on_reply, no_ack=True)
    commands = await channel.get_exchange(broker.topology.commands_exchange, ensure=False)

    async def request(command: Command) -> AbstractIncomingMessage:
        message = command_message(command, reply_to=names.DIRECT_REPLY_TO)
        await commands.publish(to_amqp(message), message.routing_key)
        await replies.wait_until(
            lambda ms: any(m.correlation_id == message.message_id for m in ms),
            what=f"the direct reply to {message.routing_key}",
        )
        return next(m for m in replies.messages if m.correlation_id == message.message_id)

    try:
        created = await request(CreateCoupon(code="DIRECT", init_count=5))
        assert created.type == "coupon.created"
        found = await request(GetCoupon(code="DIRECT"))
        assert found.type == "coupon.found"
        body = json.loads(found.body)
        assert (body["code"], body["init_count"], body["remaining_count"]) == ("DIRECT", 5, 5)
        assert body["id"] == json.loads(created.body)["id"]
        missing = await request(GetCoupon(code="ELSEWHERE"))
        assert missing.type == "coupon.error"
        assert json.loads(missing.body)["error"] == "DoesNotExist"

        message_id = str(uuid.uuid4())
        await commands.publish(
            aio_pika.Message(
                b"not json",
                message_id=message_id,
                content_type=names.JSON_CONTENT_TYPE,
                reply_to=names.DIRECT_REPLY_TO,
            ),
            names.CREATE,
        )
        await replies.wait_until(
            lambda ms: any(m.correlation_id == message_id for m in ms), what="the invalid reply"
        )
        [invalid] = [m for m in replies.messages if m.correlation_id == message_id]
        assert json.loads(invalid.body)["error"] == "InvalidCommand"
    finally:
        await channel.close()
    assert await worker.stop() == 0
    assert await coupons(db) == {"DIRECT": (5, 5)}
    assert [m.message_id for m in await broker.dead_letters()] == [message_id]
