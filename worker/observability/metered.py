"""Decorators that feed `Metrics`: around the pipeline (batch size and duration), the publisher
(confirm latency, outcomes, dead letters) and the unit of work (commands answered from their
stored outcome). Applied by the composition root (`worker.entrypoints.run`) only."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from aio_pika.abc import AbstractIncomingMessage

from worker.app.outcomes import Outcome
from worker.app.pipeline import CommandPipeline, Envelope
from worker.app.ports import ForwardingUnitOfWork, ProcessedCommands, UnitOfWork
from worker.messaging.publisher import OutcomePublisher
from worker.observability.metrics import Metrics


class MeteredPipeline:
    def __init__(self, inner: CommandPipeline, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        self._metrics.batch_size.observe(len(batch))
        started = time.perf_counter()
        outcomes = await self._inner.process(batch)
        self._metrics.batch_duration.observe(time.perf_counter() - started)
        return outcomes


class MeteredPublisher:
    def __init__(self, inner: OutcomePublisher, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None:
        started = time.perf_counter()
        await self._inner.publish_outcomes(answers)
        # The batch is acknowledged when its last confirm arrives: that is each one's wait.
        waited = time.perf_counter() - started
        for command, outcome in answers:
            self._metrics.outcome_confirm.observe(waited)
            self._metrics.outcome(outcome)
            self._metrics.answered(command)

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        started = time.perf_counter()
        await self._inner.dead_letter(command, error, detail, reply_error)
        self._metrics.dead_letter_confirm.observe(time.perf_counter() - started)
        self._metrics.dead_lettered.labels(error).inc()


class _CountedProcessedCommands:
    def __init__(self, inner: ProcessedCommands, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def outcomes(self, message_ids: Sequence[str]) -> dict[str, Outcome]:
        found = await self._inner.outcomes(message_ids)
        if found:
            self._metrics.duplicates.inc(len(found))
        return found

    async def record(self, outcomes: Sequence[Outcome]) -> bool:
        return await self._inner.record(outcomes)


class MeteredUnitOfWork(ForwardingUnitOfWork):
    """Counts the commands answered from their stored outcome."""

    def __init__(self, inner: UnitOfWork, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics

    @property
    def processed(self) -> ProcessedCommands:
        return _CountedProcessedCommands(self._inner.processed, self._metrics)


def metered_units_of_work(
    unit_of_work: Callable[[], UnitOfWork], metrics: Metrics
) -> Callable[[], UnitOfWork]:
    return lambda: MeteredUnitOfWork(unit_of_work(), metrics)
