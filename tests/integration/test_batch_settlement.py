"""A batch's settlement on the real broker: its outcomes are published with one confirm wait
(a channel closing mid-batch fails the whole batch at once, and its commands are returned),
and it is acknowledged with `multiple=True` only where no other batch's delivery lies under
its highest delivery tag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from contracts.names import Topology
from tests.integration.test_settlement import assert_returned, delivered, outcome_of
from tests.support.broker import Broker
from tests.support.in_process import Channels, channels
from worker.messaging.batches import answer
from worker.messaging.connection import connect_broker
from worker.messaging.publisher import Publisher
from worker.messaging.settlement import Fate, Settlement
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
async def opened(broker: Broker, settings: Settings) -> AsyncIterator[Channels]:
    async with channels(settings) as opened:
        yield opened


async def test_a_batch_alone_under_its_highest_tag_is_acknowledged_with_one_multiple_ack(
    broker: Broker, opened: Channels
) -> None:
    settlement = Settlement()
    batch = [await delivered(broker, opened, f"whole-{n}") for n in range(3)]
    for message in batch:
        settlement.receive(message)

    async with settlement.guard(batch) as deliveries:
        await answer(opened.publisher, settlement, deliveries, [outcome_of(m) for m in batch])

    assert [d.fate for d in deliveries] == [Fate.ACKNOWLEDGED] * 3
    assert settlement.unsettled == 0
    # Only the highest tag went to the broker, with multiple=True ...
    assert [m.processed for m in batch] == [False, False, True]
    # ... and it settled them all: closing the channel returns nothing to the queue.
    await opened.consume.close()
    await asyncio.sleep(0.3)
    assert await broker.depth(broker.topology.worker_queue) == 0


async def test_interleaved_batches_are_acknowledged_one_by_one_never_the_others(
    broker: Broker, opened: Channels
) -> None:
    settlement = Settlement()
    messages = [await delivered(broker, opened, f"interleaved-{n}") for n in range(6)]
    for message in messages:
        settlement.receive(message)
    first, second = messages[0::2], messages[1::2]  # tags 1,3,5 and 2,4,6

    async with settlement.guard(first) as deliveries:
        await answer(opened.publisher, settlement, deliveries, [outcome_of(m) for m in first])

    assert [m.processed for m in first] == [True, True, True], "acknowledged one by one"
    assert settlement.unsettled == 3
    # The second batch's deliveries are still held: returning them works (had a multiple ack
    # settled them, the broker would close the channel on an unknown delivery tag).
    async with settlement.guard(second) as deliveries:
        for delivery in deliveries:
            await settlement.requeue(delivery)
    for message in second:
        await assert_returned(opened, message)
    assert settlement.unsettled == 0


async def test_a_later_batch_finishing_first_does_not_acknowledge_an_earlier_one(
    broker: Broker, opened: Channels
) -> None:
    settlement = Settlement()
    messages = [await delivered(broker, opened, f"later-{n}") for n in range(4)]
    for message in messages:
        settlement.receive(message)
    earlier, later = messages[:2], messages[2:]

    async with settlement.guard(later) as deliveries:
        await answer(opened.publisher, settlement, deliveries, [outcome_of(m) for m in later])
    assert [m.processed for m in later] == [True, True]
    async with settlement.guard(earlier) as deliveries:  # now alone under its highest tag
        await answer(opened.publisher, settlement, deliveries, [outcome_of(m) for m in earlier])
    assert [m.processed for m in earlier] == [False, True]

    await opened.consume.close()
    await asyncio.sleep(0.3)
    assert await broker.depth(broker.topology.worker_queue) == 0
    assert settlement.unsettled == 0


async def test_a_channel_closing_mid_batch_fails_the_whole_batch_fast_and_returns_it(
    broker: Broker, opened: Channels, settings: Settings, stack: AsyncExitStack
) -> None:
    # Publishing to an exchange that does not exist makes the broker close the channel at the
    # first publish, with the batch's other publishes already written behind it. On a
    # connection of its own: frames sent on the closed channel may cost the broker connection.
    connection = await connect_broker(settings, name="closing-publisher")
    stack.push_async_callback(connection.close)
    channel = await connection.channel(publisher_confirms=True)
    timeout = 40.0
    publisher = Publisher(channel, channel, Topology(f"{settings.name_prefix}absent-"), timeout)
    await publisher.start()
    settlement = Settlement()
    batch = [await delivered(broker, opened, f"closing-{n}") for n in range(5)]
    for message in batch:
        settlement.receive(message)

    started = asyncio.get_running_loop().time()
    async with settlement.guard(batch) as deliveries:
        await answer(publisher, settlement, deliveries, [outcome_of(m) for m in batch])
    elapsed = asyncio.get_running_loop().time() - started

    assert elapsed < timeout / 4, f"took {elapsed:.1f}s: waited for the publish timeout"
    assert [d.fate for d in deliveries] == [Fate.REQUEUED] * 5
    for _ in batch:
        again = await opened.queue.get(no_ack=False, timeout=10)
        assert again is not None and again.redelivered
        assert again.message_id in {m.message_id for m in batch}
        await again.ack()
    assert settlement.unsettled == 0
