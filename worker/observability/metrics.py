"""Prometheus metrics of one worker process, and the decorators that feed them.

The decorators wrap the pipeline, the publisher and the unit of work at the composition root;
production classes know nothing of them. Two facts only the consumer sees come through one hook
(`delivered`, for redeliveries) and one reading (`in_flight`).

Names follow Prometheus conventions: `coupon_worker_` prefix, base units (seconds), `_total` on
counters (added by the client library), labels with a small, closed set of values.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from types import TracebackType
from typing import Final, Self

from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from contracts import names
from worker.domain.model import Outcome
from worker.domain.ports import CouponRepository, ProcessedCommands, UnitOfWork
from worker.messaging.publisher import OutcomePublisher
from worker.pipeline import BatchProcessor, Envelope

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    """Every metric of the worker, in a registry of its own (several workers can live in one
    test process)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        self.commands = Counter(
            "coupon_worker_commands",
            "Commands answered (outcome published and confirmed), by command and outcome; "
            "outcome is the event name, or the error of a coupon.error",
            ["routing_key", "outcome"],
            registry=registry,
        )
        self.duplicates = Counter(
            "coupon_worker_duplicate_commands",
            "Commands found already applied and answered from their stored outcome",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "coupon_worker_dead_lettered_commands",
            "Commands the worker dead-lettered, by x-error (RabbitMQ's own dead letters, at the "
            "delivery limit, are not seen here: watch coupon_worker_dead_letter_queue_messages)",
            ["error"],
            registry=registry,
        )
        self.redeliveries = Counter(
            "coupon_worker_redeliveries",
            "Deliveries flagged as redelivered by the broker (a crash, a requeue, a lost ack)",
            registry=registry,
        )
        self.batch_duration = Histogram(
            "coupon_worker_batch_duration_seconds",
            "Time to handle one batch in one transaction: dedupe, handle, record, commit",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "coupon_worker_batch_size_commands",
            "Commands per batch handed to the pipeline",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.confirm_duration = Histogram(
            "coupon_worker_publish_confirm_duration_seconds",
            "Time from publishing to the broker's confirm, by what was published",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "coupon_worker_commands_in_flight",
            "Commands delivered to this worker and not yet settled",
            registry=registry,
        )
        self.broker_connected = Gauge(
            "coupon_worker_broker_connected",
            "1 while the broker connection is open",
            registry=registry,
        )
        self.database_up = Gauge(
            "coupon_worker_database_up", "1 while PostgreSQL answers SELECT 1", registry=registry
        )
        self.consuming = Gauge(
            "coupon_worker_consuming", "1 while the worker consumes its queue", registry=registry
        )
        self.dead_letter_queue = Gauge(
            "coupon_worker_dead_letter_queue_messages",
            "Letters waiting in coupon.worker.dead (sampled by each worker)",
            registry=registry,
        )
        Info("coupon_worker_build", "Versions of this worker", registry=registry).info(
            {
                "version": _version(),
                "contract": names.CONTRACT_VERSION,
                "python": platform.python_version(),
            }
        )

        # Labelled children looked up once: `labels()` takes a lock and builds a key per call.
        self.outcome_confirm = self.confirm_duration.labels("outcome")
        self.dead_letter_confirm = self.confirm_duration.labels("dead_letter")
        self._commands: dict[tuple[str, str], Counter] = {}

    def delivered(self, message: AbstractIncomingMessage) -> None:
        """The consumer's hook, once per delivery."""
        if message.redelivered:
            self.redeliveries.inc()

    def track_in_flight(self, read: Callable[[], int]) -> None:
        self.in_flight.set_function(lambda: float(read()))

    def outcome(self, outcome: Outcome) -> None:
        label = outcome.routing_key.removeprefix("coupon.")
        if outcome.routing_key == names.ERROR:
            label = str(json.loads(outcome.body).get("error", "unknown"))
        key = (outcome.command, label)
        child = self._commands.get(key)
        if child is None:
            child = self._commands[key] = self.commands.labels(*key)
        child.inc()


def _version() -> str:
    try:
        return metadata.version("coupon-worker")
    except metadata.PackageNotFoundError:
        return "unknown"


class MeteredPipeline:
    def __init__(self, inner: BatchProcessor, metrics: Metrics) -> None:
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

    async def publish_outcome(self, outcome: Outcome, command: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        await self._inner.publish_outcome(outcome, command)
        self._metrics.outcome_confirm.observe(time.perf_counter() - started)
        self._metrics.outcome(outcome)

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


class MeteredUnitOfWork:
    """Counts the commands answered from their stored outcome."""

    def __init__(self, inner: UnitOfWork, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    @property
    def coupons(self) -> CouponRepository:
        return self._inner.coupons

    @property
    def processed(self) -> ProcessedCommands:
        return _CountedProcessedCommands(self._inner.processed, self._metrics)

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def commit(self) -> None:
        await self._inner.commit()


def metered_units_of_work(
    unit_of_work: Callable[[], UnitOfWork], metrics: Metrics
) -> Callable[[], UnitOfWork]:
    return lambda: MeteredUnitOfWork(unit_of_work(), metrics)
