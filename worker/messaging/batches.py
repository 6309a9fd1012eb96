"""One batch of deliveries, read top to bottom: decode → run under the retry policy → publish →
settle.

1. decode and validate each message; an invalid one is dead-lettered with its reason;
2. run the valid ones through the pipeline under the retry policy, which yields a verdict as
   each command is decided (`Succeeded`: the batch, or a command alone, committed; `GaveUp`: a
   command alone failed its last attempt);
3. publish: the outcomes of what succeeded, a dead letter for what was given up on;
4. settle: acknowledge what the broker confirmed, return to the queue what it did not.

All of it inside the settlement guard, which settles whatever this leaves unsettled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager

import structlog
from aio_pika.abc import AbstractIncomingMessage

from contracts.validation import InvalidCommand, bounded, decode_command
from worker.app.outcomes import Outcome
from worker.app.pipeline import CommandPipeline, Envelope
from worker.logs import message_context
from worker.messaging.connection import broker_call
from worker.messaging.publisher import OutcomePublisher
from worker.messaging.retry import GaveUp, RetryPolicy
from worker.messaging.settlement import Delivery, Fate, Settlement

log = structlog.stdlib.get_logger(__name__)
# The standard library's logger of the same name decides the level (worker/logs.py); asked
# directly, it answers whether or not structlog is configured (in-process tests do not).
_levels = logging.getLogger(__name__)

PROCESSING_FAILED = "ProcessingFailed"
INVALID_COMMAND = "InvalidCommand"
DEAD_LETTER_RETRY_PAUSE = 1.0  # do not spin on a broker that refuses dead letters

Item = tuple[Delivery, Envelope]


class BatchRunner:
    """Runs the batches the intake forms (`run`), one task per batch."""

    def __init__(
        self,
        pipeline: CommandPipeline,
        publisher: OutcomePublisher,
        settlement: Settlement,
        retry: RetryPolicy,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self._pipeline = pipeline
        self._publisher = publisher
        self._settlement = settlement
        self._retry = retry
        self._redact = redact

    async def run(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        async with self._settlement.guard(messages) as deliveries:
            valid = await self._decode(deliveries)
            if not valid:
                return
            verdicts = self._retry.run(valid, attempt=self._process, alone=_log_context)
            async with aclosing(verdicts):
                async for verdict in verdicts:
                    if isinstance(verdict, GaveUp):
                        await self._give_up(verdict)
                    else:
                        answered = [delivery for delivery, _ in verdict.items]
                        await answer(self._publisher, self._settlement, answered, verdict.result)

    async def _decode(self, deliveries: Sequence[Delivery]) -> list[Item]:
        """The valid commands, each with its delivery; the invalid dead-lettered (together)."""
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
                    dead_letter(
                        self._publisher,
                        self._settlement,
                        delivery,
                        invalid.code,
                        invalid.detail,
                        INVALID_COMMAND,
                    )
                )
                continue
            valid.append((delivery, Envelope(message_id=str(message.message_id), command=command)))
        if rejections:
            await asyncio.gather(*rejections)
        return valid

    async def _process(self, items: Sequence[Item]) -> list[Outcome]:
        return await self._pipeline.process([envelope for _, envelope in items])

    async def _give_up(self, verdict: GaveUp[Item]) -> None:
        """A command that failed its last attempt alone: dead-lettered with the last error."""
        error = verdict.error
        detail = f"failed {verdict.attempts} times, last with {type(error).__name__}: {error}"
        await dead_letter(
            self._publisher,
            self._settlement,
            verdict.item[0],
            PROCESSING_FAILED,
            self._redact(bounded(detail)),
            PROCESSING_FAILED,
        )


async def answer(
    publisher: OutcomePublisher,
    settlement: Settlement,
    deliveries: Sequence[Delivery],
    outcomes: Sequence[Outcome],
) -> None:
    """Publish each command's outcome; once every publish is confirmed, acknowledge them all;
    if one is not, return them all to the queue."""
    answers = [(d.message, o) for d, o in zip(deliveries, outcomes, strict=True)]
    try:
        await broker_call(publisher.publish_outcomes(answers))
    except Exception as error:
        # Committed but not confirmed (the outlet has tried again on every new connection
        # while the commands were held): return them; their redelivery is answered from the
        # stored outcomes, with the same event message ids.
        log.warning("publish_failed", count=len(deliveries), error=repr(error))
        await settlement.requeue_all(deliveries)
        return
    await settlement.ack_all(deliveries)
    log.info("batch_answered", count=len(deliveries))
    if _levels.isEnabledFor(logging.DEBUG):
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            log.debug("command_processed", **delivery.context, outcome=outcome.routing_key)


async def dead_letter(
    publisher: OutcomePublisher,
    settlement: Settlement,
    delivery: Delivery,
    error: str,
    detail: str,
    reply_error: str,
) -> None:
    """A confirmed copy in the dead-letter queue (and a reply to the sender), then an ack;
    returned to the queue, after a pause, if the broker does not confirm the copy."""
    try:
        await broker_call(publisher.dead_letter(delivery.message, error, detail, reply_error))
    except Exception as failure:
        # Refused by the broker (the outlet tries a lost connection again by itself): do not
        # spin on it.
        log.error("dead_letter_failed", **delivery.context, error=repr(failure))
        await asyncio.sleep(DEAD_LETTER_RETRY_PAUSE)
        await settlement.requeue(delivery)
        return
    await settlement.ack(delivery, Fate.DEAD_LETTERED)
    log.warning("command_dead_lettered", **delivery.context, error=error, detail=detail)


@contextmanager
def _log_context(item: Item) -> Iterator[None]:
    """A command tried alone: its identifiers on every log line of its tries and its fate."""
    with message_context(item[0].context):
        yield
