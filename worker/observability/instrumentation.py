"""What the composition root wraps around the worker's parts so that an operator can watch it:
metrics always, OpenTelemetry traces when the `OTEL_*` variables ask for them (else nothing of
OpenTelemetry is imported). The same shape as `worker.testing.injection`: decorators over the
app's and messaging's Protocols, plus the consumer's delivery hook.

Order, innermost first: a traced publisher publishes each outcome under its own command's trace
(one inner call per outcome), so it sits next to the real publisher; the metered one around it
times the batch's confirms as a whole; fault injection, applied after these, stays outermost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.names import Topology
from worker.app.pipeline import CommandPipeline
from worker.app.ports import UnitOfWork
from worker.messaging.publisher import OutcomePublisher
from worker.observability import traced, tracing
from worker.observability.metered import (
    MeteredPipeline,
    MeteredPublisher,
    metered_units_of_work,
)
from worker.observability.metrics import Metrics

T = TypeVar("T")


class Instrumentation:
    def __init__(self, topology: Topology) -> None:
        self.metrics = Metrics()
        provider = tracing.configure()  # None: tracing is off
        self._tracing = tracing.Tracing(provider, topology) if provider is not None else None

    def database(self, engine: AsyncEngine) -> None:
        """The worker's engine: a span per statement when tracing is on."""
        if self._tracing is not None:
            self._tracing.database(engine)

    def unobserved(self, check: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        """A probe's work (readiness checks), kept out of the traces."""
        return lambda: tracing.untraced(self._tracing, check)

    def unit_of_work(self, factory: Callable[[], UnitOfWork]) -> Callable[[], UnitOfWork]:
        return metered_units_of_work(factory, self.metrics)

    def publisher(self, publisher: OutcomePublisher) -> OutcomePublisher:
        if self._tracing is not None:
            publisher = traced.TracedPublisher(publisher, self._tracing)
        return MeteredPublisher(publisher, self.metrics)

    def pipeline(self, pipeline: CommandPipeline) -> CommandPipeline:
        metered = MeteredPipeline(pipeline, self.metrics)
        if self._tracing is None:
            return metered
        return traced.TracedPipeline(metered, self._tracing)

    def delivered(self, message: AbstractIncomingMessage) -> None:
        """The consumer's delivery hook: redeliveries counted, trace contexts remembered."""
        self.metrics.delivered(message)
        if self._tracing is not None:
            self._tracing.delivered(message)

    async def close(self) -> None:
        """Flush the spans still buffered (off the loop: the exporter blocks)."""
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.close)
