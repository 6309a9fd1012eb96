"""Intake, in process on the real broker: batches are what is already delivered (up to the
batch size), the careful start takes redelivered commands one at a time and alone, and the
first fresh command opens the full prefetch."""

from __future__ import annotations

import asyncio
import json

import pytest
from aio_pika.abc import AbstractIncomingMessage

from contracts import CreateCoupon
from tests.support.broker import Broker
from tests.support.in_process import ScriptedPipeline, running_consumer, wait_depth
from worker.settings import Settings

pytestmark = pytest.mark.timeout(120)


async def returned_once(broker: Broker, codes: list[str]) -> None:
    """Queue creates of `codes` that were delivered once and returned unacknowledged, as a
    crashed worker's would be: they head the queue, flagged redelivered."""
    for code in codes:
        await broker.send(CreateCoupon(code=code, init_count=1))
    assert broker.connection is not None
    channel = await broker.connection.channel()
    queue = await channel.get_queue(broker.topology.worker_queue, ensure=False)
    for _ in codes:
        assert await queue.get(no_ack=False, timeout=10) is not None
    await channel.close()
    await wait_depth(broker, len(codes))


async def test_redelivered_commands_run_one_at_a_time_and_alone_before_fresh_ones(
    broker: Broker, settings: Settings
) -> None:
    suspects = ["suspect-0", "suspect-1", "suspect-2"]
    await returned_once(broker, suspects)
    fresh = [f"fresh-{n}" for n in range(20)]
    for code in fresh:
        await broker.send(CreateCoupon(code=code, init_count=1))
    events = await broker.collect_events()
    pipeline = ScriptedPipeline()
    pipeline.gate = asyncio.Event()

    async with running_consumer(settings, pipeline) as consumer:
        # The first suspect is held in the pipeline: with a prefetch of one, nothing else
        # has left the queue.
        await asyncio.wait_for(pipeline.entered.wait(), 30)
        await asyncio.sleep(0.5)
        assert await broker.depth(broker.topology.worker_queue) == len(suspects + fresh) - 1
        assert pipeline.batches == [["suspect-0"]]
        # Not consuming yet (what `worker_ready` and the readiness probe wait for).
        consuming = asyncio.create_task(consumer.wait_consuming())
        await asyncio.sleep(0.2)
        assert not consuming.done() and not consumer.consuming
        pipeline.gate.set()
        await asyncio.wait_for(consuming, 30)
        # Once it returns, the broker counts the consumer: nothing left to race.
        assert consumer.consuming
        assert await broker.consumers(broker.topology.worker_queue) == 1
        await events.wait_for(len(suspects + fresh))

    assert pipeline.batches[:3] == [[code] for code in suspects]
    assert sorted(code for batch in pipeline.batches[3:] for code in batch) == sorted(fresh)
    assert pipeline.alongside[:3] == [0, 0, 0]  # nothing else in flight beside a suspect
    assert sorted(pipeline.database.coupons) == sorted(suspects + fresh)


async def test_a_batch_is_what_is_already_delivered_up_to_the_batch_size(
    broker: Broker, settings: Settings
) -> None:
    settings = settings.model_copy(update={"batch_size": 8, "concurrency": 1})
    codes = [f"code-{n:02}" for n in range(30)]
    for code in codes:
        await broker.send(CreateCoupon(code=code, init_count=1))
    events = await broker.collect_events()
    pipeline = ScriptedPipeline()
    pipeline.gate = asyncio.Event()

    async with running_consumer(settings, pipeline):
        # The first batch is held; the first fresh command opened the full prefetch, so the
        # consumer takes the whole queue meanwhile.
        await wait_depth(broker, 0)
        pipeline.gate.set()
        await events.wait_for(len(codes))

    sizes = [len(batch) for batch in pipeline.batches]
    assert max(sizes) == 8, sizes  # what piled up while the first batch was held
    assert all(size <= 8 for size in sizes)
    # One batch at a time (concurrency 1), in delivery order: each command once, in order.
    assert [code for batch in pipeline.batches for code in batch] == codes
    assert await broker.depth(broker.topology.worker_queue) == 0


async def test_every_delivery_enters_through_the_one_receive_path_careful_start_included(
    broker: Broker, settings: Settings
) -> None:
    """The delivery hook (the composition root's redelivery metric and trace contexts) sees the
    redelivered heads the careful start takes with `basic.get` as well as the consumer's."""
    suspects = ["seen-suspect-0", "seen-suspect-1"]
    await returned_once(broker, suspects)
    fresh = [f"seen-fresh-{n}" for n in range(5)]
    for code in fresh:
        await broker.send(CreateCoupon(code=code, init_count=1))
    events = await broker.collect_events()
    seen: list[tuple[str, bool]] = []

    def hook(message: AbstractIncomingMessage) -> None:
        seen.append((str(json.loads(message.body)["code"]), bool(message.redelivered)))

    async with running_consumer(settings, ScriptedPipeline(), on_delivery=hook):
        await events.wait_for(len(suspects + fresh))

    assert seen[:2] == [(code, True) for code in suspects]
    assert sorted(seen[2:]) == sorted((code, False) for code in fresh)
