"""Settlement, in process on the real broker: every delivery leaves its guard with exactly one
fate — acknowledged, returned to the queue, or dead-lettered — whatever the block did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from aio_pika.abc import AbstractIncomingMessage

from contracts import CreateCoupon
from tests.support.broker import Broker
from tests.support.in_process import Channels, channels
from worker.app.outcomes import Outcome
from worker.messaging.batches import answer, dead_letter
from worker.messaging.publisher import ChannelLost
from worker.messaging.settlement import AlreadySettled, Fate, Settlement
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def opened(broker: Broker, settings: Settings) -> AsyncIterator[Channels]:
    async with channels(settings) as opened:
        yield opened


async def delivered(broker: Broker, opened: Channels, code: str) -> AbstractIncomingMessage:
    """A create of `code`, sent and then delivered to the worker's channel, unacknowledged."""
    await broker.send(CreateCoupon(code=code, init_count=1))
    message = await opened.queue.get(no_ack=False, timeout=10)
    assert message is not None
    return message


def outcome_of(message: AbstractIncomingMessage) -> Outcome:
    return Outcome(
        command_message_id=str(message.message_id),
        command="coupon.create",
        routing_key="coupon.created",
        body=b'{"answer": "stored"}',
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


async def assert_returned(opened: Channels, message: AbstractIncomingMessage) -> None:
    """The message is back in the queue, flagged redelivered, and the channel still works."""
    again = await opened.queue.get(no_ack=False, timeout=10)
    assert again is not None
    assert (again.message_id, again.redelivered) == (message.message_id, True)
    await again.ack()
    assert not opened.consume.is_closed


async def test_an_exception_after_publishing_returns_the_delivery_at_once(
    broker: Broker, opened: Channels
) -> None:
    events = await broker.collect_events()
    settlement = Settlement()
    message = await delivered(broker, opened, "after-publish")
    settlement.receive(message)

    async with settlement.guard([message]) as [delivery]:
        await opened.publisher.publish_outcomes([(message, outcome_of(message))])
        raise RuntimeError("after publishing, before the ack")

    assert delivery.fate is Fate.REQUEUED
    assert settlement.unsettled == 0, "nothing waits for a stop to be returned"
    await assert_returned(opened, message)
    [event] = await events.wait_for(1)
    assert event.message_id == outcome_of(message).event_message_id


async def test_a_second_fate_is_refused_before_it_reaches_the_broker(
    broker: Broker, opened: Channels
) -> None:
    settlement = Settlement()
    message = await delivered(broker, opened, "twice")
    settlement.receive(message)
    refused: list[BaseException] = []

    async with settlement.guard([message]) as [delivery]:
        await settlement.ack(delivery)
        try:
            await settlement.requeue(delivery)
        except AlreadySettled as error:
            refused.append(error)
            raise

    assert len(refused) == 1 and delivery.fate is Fate.ACKNOWLEDGED
    # A nack after the ack would have closed the channel (unknown delivery tag).
    await asyncio.sleep(0.3)
    assert not opened.consume.is_closed
    assert await opened.queue.get(no_ack=False, fail=False, timeout=1) is None
    assert settlement.unsettled == 0


async def test_a_cancelled_block_returns_its_deliveries_and_stays_cancelled(
    broker: Broker, opened: Channels
) -> None:
    settlement = Settlement()
    messages = [await delivered(broker, opened, f"cancelled-{n}") for n in range(2)]
    for message in messages:
        settlement.receive(message)
    entered = asyncio.Event()

    async def held() -> None:
        async with settlement.guard(messages):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(held())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert settlement.unsettled == 0 and settlement.requeued == 2
    for message in messages:
        await assert_returned(opened, message)


async def test_a_delivery_the_block_forgot_is_returned(broker: Broker, opened: Channels) -> None:
    settlement = Settlement()
    kept, forgotten = [await delivered(broker, opened, f"forgot-{n}") for n in range(2)]
    for message in (kept, forgotten):
        settlement.receive(message)

    async with settlement.guard([kept, forgotten]) as [first, second]:
        await settlement.ack(first)

    assert (first.fate, second.fate) == (Fate.ACKNOWLEDGED, Fate.REQUEUED)
    await assert_returned(opened, forgotten)
    assert settlement.unsettled == 0


class UnconfirmedPublisher:
    """Implements `OutcomePublisher`: publishes nothing, as if the channel closed before the
    broker confirmed; dead letters go to the real publisher."""

    def __init__(self, opened: Channels) -> None:
        self._opened = opened

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None:
        raise ChannelLost("the channel closed before the broker confirmed")

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        await self._opened.publisher.dead_letter(command, error, detail, reply_error)


async def test_an_answer_is_acknowledged_only_once_every_outcome_is_confirmed(
    broker: Broker, opened: Channels
) -> None:
    events = await broker.collect_events()
    confirmed = Settlement()
    unconfirmed = Settlement()
    answered = [await delivered(broker, opened, f"answered-{n}") for n in range(2)]
    lost = [await delivered(broker, opened, f"lost-{n}") for n in range(2)]

    async with confirmed.guard(answered) as deliveries:
        await answer(opened.publisher, confirmed, deliveries, [outcome_of(m) for m in answered])
    async with unconfirmed.guard(lost) as deliveries:
        await answer(
            UnconfirmedPublisher(opened), unconfirmed, deliveries, [outcome_of(m) for m in lost]
        )

    assert {m.message_id for m in await events.wait_for(2)} == {
        outcome_of(m).event_message_id for m in answered
    }
    for message in lost:  # committed, not confirmed: returned, to be answered again
        await assert_returned(opened, message)
    assert await opened.queue.get(no_ack=False, fail=False, timeout=1) is None


async def test_a_dead_letter_is_confirmed_then_acknowledged(
    broker: Broker, opened: Channels
) -> None:
    settlement = Settlement()
    message = await delivered(broker, opened, "dead")
    settlement.receive(message)

    async with settlement.guard([message]) as [delivery]:
        await dead_letter(
            opened.publisher, settlement, delivery, "InvalidCommand", "the reason", "InvalidCommand"
        )

    assert delivery.fate is Fate.DEAD_LETTERED
    [dead] = await broker.wait_dead_letters(1, within=10)
    assert dead.message_id == message.message_id
    assert (dead.headers or {}).get("x-error") == "InvalidCommand"
    assert await opened.queue.get(no_ack=False, fail=False, timeout=1) is None
    assert settlement.unsettled == 0
