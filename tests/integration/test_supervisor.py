"""The supervisor, in process on the real broker: a lost link is replaced from scratch, a batch
whose publishing connection went away is published on the next one (its commands held, not
returned), a consumer the broker cancelled is noticed and started anew, and a worker that cannot
consume while the broker is usable ends at `WORKER_STUCK_LIMIT` instead of idling for good."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from contracts import CreateCoupon
from tests.support.broker import Broker
from tests.support.in_process import ScriptedPipeline, running_supervisor, wait_depth
from worker.messaging.stuck import WorkerStuck
from worker.settings import Settings

pytestmark = pytest.mark.timeout(120)

WITHIN = 15.0  # seconds to consume again; the supervisor's own bound is a third of the limit


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"stuck_limit": 6.0}


async def test_a_batch_whose_publishing_connection_is_lost_is_published_on_the_next(
    broker: Broker, settings: Settings
) -> None:
    events = await broker.collect_events()
    pipeline = ScriptedPipeline()
    pipeline.gate = asyncio.Event()
    async with running_supervisor(settings, pipeline) as supervised:
        supervisor = supervised.supervisor
        codes = [f"held-{n}" for n in range(3)]
        for code in codes:
            await broker.send(CreateCoupon(code=code, init_count=1))
        await asyncio.wait_for(pipeline.entered.wait(), 10)
        lost = supervisor.publishing_link
        assert lost is not None
        await lost.connection.close()  # as the broker or the network would end it
        pipeline.gate.set()  # the batch commits now, with no publishing connection
        received = await events.wait_for(len(codes), within=WITHIN)
        assert sorted(json.loads(e.body)["code"] for e in received) == codes
        replacement = supervisor.publishing_link
        assert replacement is not None and replacement is not lost and replacement.is_open
        await wait_depth(broker, 0)
        # Held, not returned: each command went through the pipeline once, nothing redelivered.
        assert sorted(code for batch in pipeline.batches for code in batch) == codes
        assert supervisor.consuming and supervised.outlet.usable
        assert supervisor.liveness() is None


async def test_a_consuming_connection_closed_under_the_worker_is_replaced(
    broker: Broker, settings: Settings
) -> None:
    events = await broker.collect_events()
    pipeline = ScriptedPipeline()
    async with running_supervisor(settings, pipeline) as supervised:
        supervisor = supervised.supervisor
        first = supervisor.consumer
        link = supervisor.consuming_link
        assert link is not None and first is not None
        await link.connection.close()
        await broker.send(CreateCoupon(code="after-the-loss", init_count=1))
        [event] = await events.wait_for(1, within=WITHIN)
        assert json.loads(event.body)["code"] == "after-the-loss"
        assert supervisor.consumer is not first and supervisor.consuming
        assert await broker.consumers(broker.topology.worker_queue) == 1


async def test_a_consumer_the_broker_cancelled_is_noticed_and_started_anew(
    broker: Broker, settings: Settings
) -> None:
    events = await broker.collect_events()
    pipeline = ScriptedPipeline()
    async with running_supervisor(settings, pipeline) as supervised:
        supervisor = supervised.supervisor
        first = supervisor.consumer
        assert first is not None
        # Deleting the queue cancels its consumers (basic.cancel); the channel stays open.
        await broker.ch.queue_delete(broker.topology.worker_queue)
        started = time.monotonic()
        while supervisor.consumer is first or not supervisor.consuming:
            assert time.monotonic() - started < WITHIN, "the cancelled consumer was kept"
            await asyncio.sleep(0.1)
        # Started anew from scratch: the topology declared again, the queue bound again.
        await broker.send(CreateCoupon(code="after-the-cancel", init_count=1))
        [event] = await events.wait_for(1, within=WITHIN)
        assert json.loads(event.body)["code"] == "after-the-cancel"
        assert supervisor.liveness() is None


async def test_a_worker_that_cannot_consume_ends_at_the_stuck_limit(
    broker: Broker, settings: Settings
) -> None:
    # Least privilege: the worker may not declare, so a deleted queue cannot come back.
    limited = settings.model_copy(update={"declare_topology": False})
    pipeline = ScriptedPipeline()
    async with running_supervisor(limited, pipeline) as supervised:
        supervisor = supervised.supervisor
        assert supervisor.liveness() is None
        await broker.ch.queue_delete(broker.topology.worker_queue)
        started = time.monotonic()
        with pytest.raises(WorkerStuck, match="unable to consume"):
            await asyncio.wait_for(asyncio.shield(supervised.running), 3 * limited.stuck_limit)
        ended_after = time.monotonic() - started
        assert limited.stuck_limit <= ended_after <= limited.stuck_limit + 5, ended_after
        reason = supervisor.liveness()
        assert reason is not None and "unable to consume" in reason
    await broker.declare(settings)  # for the fixture's clean-up
