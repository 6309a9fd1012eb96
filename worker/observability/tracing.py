"""OpenTelemetry traces (the optional `tracing` extra), configured by the standard `OTEL_*`
variables.

On when `OTEL_TRACES_EXPORTER` (`otlp` or `console`) or an `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`
is set, and `OTEL_SDK_DISABLED` is not `true`; the SDK itself reads `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]` and the exporter's `OTEL_EXPORTER_OTLP_*`.
Off, nothing of this is imported or wired, and the hot path runs exactly as without it.

What a traced command yields, all in the trace of the `traceparent` it carried (W3C trace
context, the default propagator):
- `<queue> receive`: the maintained aio-pika instrumentation, around the delivery;
- `coupon.worker process`: the batch's unit of work (the child of the command's context for a
  batch of one, else a span of its own linked to every traced command in it);
- `coupon.worker publish outcome` and, under it, the instrumentation's publish spans; these
  inject their context into the event's and the reply's headers, so consumers continue the trace.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import structlog
from aio_pika.abc import AbstractIncomingMessage

from worker.app.outcomes import Outcome
from worker.app.pipeline import BatchProcessor, Envelope
from worker.messaging.settlement import OutcomePublisher

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = structlog.stdlib.get_logger("worker.tracing")

TRACER_NAME: Final = "coupon-worker"
REMEMBERED: Final = 10_000  # trace contexts of delivered commands kept for their batch


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """The process's tracer provider, exporting as the environment says; None when tracing is
    off or the extra is missing (said once in the log)."""
    if not requested(environ):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("tracing_unavailable", reason="the 'tracing' extra is not installed")
        return None
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", TRACER_NAME)})
    provider = TracerProvider(resource=resource)
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


class Tracing:
    """The decorators and the delivery hook, for one tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

        instrumentor = AioPikaInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
        self.tracer: Tracer = provider.get_tracer(TRACER_NAME)
        self._contexts: OrderedDict[str, Context] = OrderedDict()

    def delivered(self, message: AbstractIncomingMessage) -> None:
        """Remember the trace context of a traced command until its batch runs."""
        headers = message.headers or {}
        if "traceparent" not in headers or message.message_id is None:
            return
        from opentelemetry import propagate

        self._contexts[message.message_id] = propagate.extract(_text_headers(headers))
        while len(self._contexts) > REMEMBERED:
            self._contexts.popitem(last=False)

    def context_of(self, message_id: str) -> Context | None:
        return self._contexts.get(message_id)

    def pipeline(self, inner: BatchProcessor) -> BatchProcessor:
        return TracedPipeline(inner, self)

    def publisher(self, inner: OutcomePublisher) -> OutcomePublisher:
        return TracedPublisher(inner, self)


def _text_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers.items()}


class TracedPipeline:
    def __init__(self, inner: BatchProcessor, tracing: Tracing) -> None:
        self._inner = inner
        self._tracing = tracing

    async def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        from opentelemetry import trace

        contexts = [c for e in batch if (c := self._tracing.context_of(e.message_id))]
        parent = contexts[0] if len(batch) == 1 and contexts else None
        links = (
            []
            if parent
            else [trace.Link(trace.get_current_span(c).get_span_context()) for c in contexts]
        )
        with self._tracing.tracer.start_as_current_span(
            "coupon.worker process",
            context=parent,
            links=links,
            attributes={"messaging.batch.message_count": len(batch)},
        ):
            return await self._inner.process(batch)


class TracedPublisher:
    def __init__(self, inner: OutcomePublisher, tracing: Tracing) -> None:
        self._inner = inner
        self._tracing = tracing

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None:
        """Each outcome published under its own command's trace: one inner call per answer, all
        at once, so that the batch still waits for its confirms together."""
        await asyncio.gather(*(self._publish(command, outcome) for command, outcome in answers))

    async def _publish(self, command: AbstractIncomingMessage, outcome: Outcome) -> None:
        context = self._tracing.context_of(outcome.command_message_id)
        with self._tracing.tracer.start_as_current_span(
            "coupon.worker publish outcome",
            context=context,
            attributes={
                "messaging.message.id": outcome.event_message_id,
                "messaging.destination.name": outcome.routing_key,
            },
        ):
            await self._inner.publish_outcomes([(command, outcome)])

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        context = self._tracing.context_of(command.message_id or "")
        with self._tracing.tracer.start_as_current_span(
            "coupon.worker dead letter", context=context, attributes={"coupon.error": error}
        ):
            await self._inner.dead_letter(command, error, detail, reply_error)
