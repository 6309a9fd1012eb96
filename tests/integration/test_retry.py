"""The retry policy, in process on the real broker: transient failures hold the commands
(nothing returned to the queue, nothing dead-lettered), a failing batch is split, and a command
that keeps failing alone is dead-lettered as ProcessingFailed after its attempts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace

import pytest
from aio_pika.abc import AbstractIncomingMessage

from contracts import CreateCoupon
from tests.support.broker import Broker
from tests.support.in_process import (
    FAST_RETRIES,
    Channels,
    ScriptedPipeline,
    channels,
    running_consumer,
    wait_depth,
)
from worker.app.failures import DependencyUnavailable, TransactionConflict, TransientFailure
from worker.app.outcomes import Outcome
from worker.settings import Settings

pytestmark = pytest.mark.timeout(120)


class RecordingPublisher:
    """Implements `OutcomePublisher` over the real publisher; records whether each answered
    command had been returned to the queue before (`redelivered`)."""

    def __init__(self, opened: Channels) -> None:
        self._inner = opened.publisher
        self.redelivered: list[bool] = []

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None:
        self.redelivered += [bool(command.redelivered) for command, _ in answers]
        await self._inner.publish_outcomes(answers)

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        await self._inner.dead_letter(command, error, detail, reply_error)


async def wait_empty(broker: Broker) -> None:
    """Wait until the worker took everything in its queue (and a moment for its dispatcher)."""
    await wait_depth(broker, 0)
    await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    "failure",
    [DependencyUnavailable("the database is down"), TransactionConflict("another won")],
    ids=["outage", "conflict"],
)
async def test_transient_failures_hold_the_commands_until_they_pass(
    broker: Broker, settings: Settings, failure: TransientFailure
) -> None:
    events = await broker.collect_events()
    pipeline = ScriptedPipeline()
    pipeline.failures = [failure] * 6  # more than max_attempts: these never count as attempts
    async with channels(settings) as opened:
        publisher = RecordingPublisher(opened)
        async with running_consumer(settings, pipeline, publisher=publisher):
            await broker.send(CreateCoupon(code="held", init_count=1))
            [event] = await events.wait_for(1)

    assert json.loads(event.body)["code"] == "held"
    assert pipeline.batches == [["held"]] * 7
    assert publisher.redelivered == [False], "held in the worker, never returned to the queue"
    assert await broker.dead_letters() == []
    assert await broker.depth(broker.topology.worker_queue) == 0


async def test_a_failing_batch_is_split_and_the_poison_dead_lettered_after_its_attempts(
    broker: Broker, settings: Settings
) -> None:
    settings = settings.model_copy(update={"concurrency": 1})
    events = await broker.collect_events()
    pipeline = ScriptedPipeline()
    pipeline.poison = {"poison"}
    pipeline.gate = asyncio.Event()
    healthy = ["first", "second", "a", "b", "c"]
    async with running_consumer(settings, pipeline):  # FAST_RETRIES: 3 attempts
        # One batch held in the pipeline, the next command waiting for a slot: what arrives
        # meanwhile joins its batch once the slot frees.
        for code in healthy[:2]:
            await broker.send(CreateCoupon(code=code, init_count=1))
            await wait_empty(broker)
        poison_id = await broker.send(CreateCoupon(code="poison", init_count=1))
        for code in healthy[2:]:
            await broker.send(CreateCoupon(code=code, init_count=1))
        await wait_empty(broker)
        pipeline.gate.set()
        answered = await events.wait_for(len(healthy))
        [dead] = await broker.wait_dead_letters(1, within=30)

    assert sorted(json.loads(m.body)["code"] for m in answered) == sorted(healthy)
    assert pipeline.batches[:2] == [["first"], ["second", "poison", "a", "b", "c"]]
    assert pipeline.batches[2:] == [["second"]] + [["poison"]] * 3 + [["a"], ["b"], ["c"]]
    assert dead.message_id == poison_id
    headers = dead.headers or {}
    assert headers.get("x-error") == "ProcessingFailed"
    assert headers.get("x-error-detail") == (
        "failed 3 times, last with RuntimeError: poison ['poison']"
    )
    assert sorted(pipeline.database.coupons) == sorted(healthy)


async def test_a_batch_past_its_deadline_is_held_as_in_an_outage(
    broker: Broker, settings: Settings
) -> None:
    # A database gone silent between statements: every attempt stalls until the gate opens.
    # Each is ended at its deadline (2 x 0.05 + 0.05 = 0.15 s) and waited out as an outage,
    # more times than max_attempts (3), and the command is answered once the database is back.
    events = await broker.collect_events()
    pipeline = ScriptedPipeline()
    pipeline.gate = asyncio.Event()
    retry = replace(FAST_RETRIES, statement_timeout=0.05)
    async with channels(settings) as opened:
        publisher = RecordingPublisher(opened)
        async with running_consumer(settings, pipeline, retry=retry, publisher=publisher):
            await broker.send(CreateCoupon(code="stalled", init_count=1))
            give_up_at = asyncio.get_running_loop().time() + 60
            while len(pipeline.batches) < 5:
                assert asyncio.get_running_loop().time() < give_up_at, pipeline.batches
                await asyncio.sleep(0.05)
            pipeline.gate.set()
            [event] = await events.wait_for(1)

    assert json.loads(event.body)["code"] == "stalled"
    # at least 4 attempts ended by the deadline (more than max_attempts), then one answered
    assert len(pipeline.batches) >= 5 and set(map(tuple, pipeline.batches)) == {("stalled",)}
    assert publisher.redelivered == [False], "held in the worker, never returned to the queue"
    assert await broker.dead_letters() == []
    assert sorted(pipeline.database.coupons) == ["stalled"]
