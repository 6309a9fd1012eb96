"""The traced decorators (the optional `tracing` extra): a `process <queue>` span around each
attempt at a batch, and a `send <exchange>` span around each outcome and dead letter. What they
record and why is `worker.observability.tracing`'s docstring; `instrumentation` applies them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from worker.app.outcomes import Outcome
from worker.app.pipeline import CommandPipeline, Envelope
from worker.messaging.publisher import OutcomePublisher
from worker.observability.tracing import (
    BATCH_COUNT,
    CONVERSATION_ID,
    DESTINATION,
    ERROR_TYPE,
    MESSAGE_ID,
    OPERATION_NAME,
    OPERATION_TYPE,
    ROUTING_KEY,
    SYSTEM,
    Tracing,
    error_type,
)


class TracedPipeline:
    """A `process <queue>` span (CONSUMER: push-based, no receive span of the worker's own)
    around each attempt at a batch."""

    def __init__(self, inner: CommandPipeline, tracing: Tracing) -> None:
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
        queue = self._tracing.topology.worker_queue
        attributes: dict[str, str | int] = {
            **SYSTEM,
            OPERATION_TYPE: "process",
            OPERATION_NAME: "process",
            DESTINATION: queue,
        }
        routing_keys = {envelope.command.routing_key for envelope in batch}
        if len(routing_keys) == 1:
            attributes[ROUTING_KEY] = routing_keys.pop()
        if len(batch) == 1:
            attributes[MESSAGE_ID] = batch[0].message_id
        else:
            attributes[BATCH_COUNT] = len(batch)
        with self._tracing.tracer.start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        ) as span:
            try:
                return await self._inner.process(batch)
            except Exception as error:
                span.set_attribute(ERROR_TYPE, error_type(error))
                raise


class TracedPublisher:
    """A `send <exchange>` span (PRODUCER) per outcome, a `send <dead-letter exchange>` per
    dead letter, each in the trace of the command it answers."""

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
        # A read (`coupon.get`) is answered to reply_to only: the default exchange, its
        # routing key the caller's queue.
        if outcome.broadcast:
            exchange, routing_key = self._tracing.topology.events_exchange, outcome.routing_key
        else:
            exchange, routing_key = "", command.reply_to or ""
        attributes = {MESSAGE_ID: outcome.event_message_id}
        if command.correlation_id or command.message_id:
            attributes[CONVERSATION_ID] = str(command.correlation_id or command.message_id)
        async with self._send(outcome.command_message_id, exchange, routing_key, attributes):
            await self._inner.publish_outcomes([(command, outcome)])

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        from opentelemetry.trace import StatusCode

        attributes = {MESSAGE_ID: command.message_id or "", ERROR_TYPE: error}
        exchange = self._tracing.topology.dead_exchange
        async with self._send(
            command.message_id or "", exchange, command.routing_key or "", attributes
        ) as span:
            # The command failed (the send did not): the trace shows as failed, with the reason.
            span.set_status(StatusCode.ERROR, error)
            await self._inner.dead_letter(command, error, detail, reply_error)

    @contextlib.asynccontextmanager
    async def _send(
        self, command_id: str, exchange: str, routing_key: str, attributes: Mapping[str, str]
    ) -> AsyncIterator[Any]:
        from opentelemetry.trace import SpanKind

        all_attributes: dict[str, str] = {
            **SYSTEM,
            OPERATION_TYPE: "send",
            OPERATION_NAME: "publish",  # the AMQP method: basic.publish
            DESTINATION: exchange,
            **attributes,
        }
        if routing_key:
            all_attributes[ROUTING_KEY] = routing_key
        with self._tracing.tracer.start_as_current_span(
            f"send {exchange}" if exchange else "send",
            context=self._tracing.context_of(command_id),
            kind=SpanKind.PRODUCER,
            attributes=all_attributes,
        ) as span:
            try:
                yield span
            except Exception as failure:
                span.set_attribute(ERROR_TYPE, error_type(failure))
                raise
