"""One batch of deliveries, from bytes to fates: decode and validate each message (the invalid
are dead-lettered with their reason), run the valid ones through the pipeline under the retry
policy, then answer them (publish, confirm, acknowledge) or dead-letter what was given up on.

Everything happens inside the settlement guard, which settles whatever this leaves unsettled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from aio_pika.abc import AbstractIncomingMessage

from contracts.validation import InvalidCommand, decode_command, truncated
from worker.app.outcomes import Outcome
from worker.app.pipeline import BatchProcessor, Envelope
from worker.logs import message_context
from worker.messaging.retry import RetryPolicy
from worker.messaging.settlement import Delivery, Settlement

PROCESSING_FAILED = "ProcessingFailed"
INVALID_COMMAND = "InvalidCommand"

Item = tuple[Delivery, Envelope]


class BatchHandler:
    """Implements the retry policy's `Work` on deliveries: an attempt is the pipeline."""

    def __init__(
        self,
        pipeline: BatchProcessor,
        settlement: Settlement,
        retry: RetryPolicy,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self._pipeline = pipeline
        self._settlement = settlement
        self._retry = retry
        self._redact = redact

    async def __call__(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        async with self._settlement.guard(messages) as deliveries:
            valid: list[Item] = []
            rejections = []
            for delivery in deliveries:
                if delivery.channel_closed:
                    self._settlement.returned_by_broker(delivery)
                    continue
                message = delivery.message
                try:
                    command = decode_command(
                        message.routing_key or "",
                        message.body,
                        message_id=message.message_id,
                        content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        type_=message.type,
                        reply_to=message.reply_to,
                    )
                except InvalidCommand as invalid:
                    rejections.append(
                        self._settlement.dead_letter(
                            delivery, invalid.code, invalid.detail, INVALID_COMMAND
                        )
                    )
                    continue
                envelope = Envelope(message_id=str(message.message_id), command=command)
                valid.append((delivery, envelope))
            if rejections:
                await asyncio.gather(*rejections)
            if valid:
                await self._retry.apply(valid, self)

    # --- the retry policy's Work -------------------------------------------------------------

    async def attempt(self, items: Sequence[Item]) -> list[Outcome]:
        return await self._pipeline.process([envelope for _, envelope in items])

    async def succeeded(self, items: Sequence[Item], result: list[Outcome]) -> None:
        await self._settlement.answer([delivery for delivery, _ in items], result)

    async def gave_up(self, item: Item, attempts: int, error: Exception) -> None:
        detail = f"failed {attempts} times, last with {type(error).__name__}: {error}"
        await self._settlement.dead_letter(
            item[0], PROCESSING_FAILED, self._redact(truncated(detail)), PROCESSING_FAILED
        )

    @contextmanager
    def alone(self, item: Item) -> Iterator[None]:
        with message_context(item[0].context):
            yield
