"""The consumer: deliveries → batches → pipeline → confirmed outcomes → acks.

Ack policy (decided here, not by aio-pika's `message.process()`):
- ack only after the batch committed and every outcome was confirmed by the broker;
- invalid command → a confirmed dead letter with its reason, then ack;
- transient fault (database unreachable, transaction conflict) → hold the messages and retry;
  nothing is nacked, so an outage does not burn the queue's delivery limit;
- unexpected failure → the batch is split and each command retried alone; one that still fails
  after `max_attempts` is dead-lettered as `ProcessingFailed`;
- redelivered messages (the worker may have crashed on one of them) run alone, with nothing
  else in flight, so a command that crashes the process cannot take its neighbours down;
- stop → no new deliveries, finish what was delivered within the grace period, return the rest.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from contracts.validation import InvalidCommand, bounded, decode_command
from worker.domain.errors import TransientFailure
from worker.domain.model import Outcome
from worker.faults import NO_FAULTS, FaultPlan, FaultPoint
from worker.logs import message_context
from worker.messaging.outage import OutageLog
from worker.messaging.publisher import OutcomePublisher
from worker.pipeline import BatchProcessor, Envelope
from worker.settings import Settings

log = structlog.stdlib.get_logger("worker.consumer")

T = TypeVar("T")

PROCESSING_FAILED = "ProcessingFailed"
SETTLE_PAUSE = 0.5  # at most, between the last ack of a stop and closing the channel
CLOSING_TIME = 0.3  # what closing the connections and exiting the process take, about


class Consumer:
    def __init__(
        self,
        settings: Settings,
        pipeline: BatchProcessor,
        publisher: OutcomePublisher,
        faults: FaultPlan = NO_FAULTS,
        redact: Callable[[str], str] = lambda text: text,
        on_delivery: Callable[[AbstractIncomingMessage], None] = lambda message: None,
    ) -> None:
        self._on_delivery = on_delivery  # metrics and tracing see each delivery here
        self._settings = settings
        self._pipeline = pipeline
        self._publisher = publisher
        self._faults = faults
        self._redact = redact
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._unsettled: set[AbstractIncomingMessage] = set()
        self._all_settled = asyncio.Event()
        self._all_settled.set()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._outage = OutageLog(log)
        self._consumer_tag: str | None = None
        self._careful = True
        self._dispatcher: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, queue: AbstractQueue, channel: AbstractChannel) -> None:
        # Careful start: one delivery at a time while the head of the queue is redelivered
        # commands (one of them may have crashed the last worker). Were the full prefetch
        # held while such a command crashes this process too, every held command would be
        # charged a delivery, and healthy commands would reach the delivery limit together
        # with the poison. The first fresh command opens the full prefetch.
        self._queue, self._channel = queue, channel
        self._careful = True
        await channel.set_qos(prefetch_count=1)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="dispatcher")
        self._consumer_tag = await queue.consume(self._receive)

    async def _open_up(self) -> None:
        """Leave the careful start: consume again with the full prefetch (a prefetch applies
        to consumers created after it is set), then cancel the one-at-a-time consumer."""
        careful_tag = self._consumer_tag
        try:
            await _broker(self._channel.set_qos(prefetch_count=self._settings.prefetch))
            self._consumer_tag = await _broker(self._queue.consume(self._receive))
            self._careful = False
            if careful_tag is not None:
                await _broker(self._queue.cancel(careful_tag))
        except Exception as error:
            # The channel may be gone; the next fresh command retries.
            log.warning("prefetch_open_failed", error=repr(error))

    async def stop(self, grace_period: float) -> int:
        """Stop taking deliveries, finish what was delivered, return the rest. Returns how
        many messages had to be returned to the queue."""
        # One deadline for the whole stop, the consumer's cancel included, less a reserve for
        # returning the unfinished and closing the connections: the process exits within its
        # grace period, before an orchestrator's SIGKILL could turn a return into a redelivery.
        loop = asyncio.get_running_loop()
        end = loop.time() + grace_period
        deadline = end - min(2.0, grace_period * 0.2)
        if self._consumer_tag is not None:
            try:
                cancel_within = min(5.0, max(deadline - loop.time(), 0.1))
                cancel = self._queue.cancel(self._consumer_tag)
                await _broker(asyncio.wait_for(cancel, cancel_within))
            except Exception as error:  # the channel may be gone; nothing is delivered then
                log.warning("consumer_cancel_failed", error=repr(error))
        try:
            async with asyncio.timeout_at(deadline):
                settled = asyncio.create_task(self._all_settled.wait())
                waits: set[asyncio.Future[Any]] = {settled}
                if self._dispatcher is not None:
                    waits.add(self._dispatcher)
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    settled.cancel()
        except TimeoutError:
            log.warning("grace_period_elapsed", unfinished=len(self._unsettled))
        tasks = [*self._in_flight, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        returned = len(self._unsettled)
        for message in list(self._unsettled):
            await self._requeue(message)
        # Half of what is left, less the time closing the connection and exiting take.
        left = end - loop.time() - CLOSING_TIME
        await self._close_channel(pause=min(SETTLE_PAUSE, max(0.0, left / 2)))
        return returned

    async def _close_channel(self, pause: float) -> None:
        """Give the acks and requeues just sent time to land, then close the consuming channel.
        A quorum queue applies settlements as low-priority commands, after the consumer-down
        that closing the connection causes: acks sent just before the close were dropped and
        their commands delivered again (measured on RabbitMQ 3.10: up to 67 of 100 acks lost
        when closing at once, or after a channel.close or a basic.qos round trip; none in 20
        runs after a pause of 0.1 s or more). Harmless either way (a redelivered command is
        answered from its stored outcome), but a clean stop should not cause redeliveries."""
        await asyncio.sleep(pause)
        try:
            await _broker(asyncio.wait_for(self._channel.close(), 5))
        except Exception as error:
            log.warning("channel_close_failed", error=repr(error))

    async def wait_failed(self) -> None:
        """Returns (raising its error) only if the dispatcher died, which is a bug."""
        assert self._dispatcher is not None
        await asyncio.shield(self._dispatcher)

    # --- receiving and batching ------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Messages delivered and not yet settled."""
        return len(self._unsettled)

    @property
    def consuming(self) -> bool:
        return self._consumer_tag is not None and not self._channel.is_closed

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        self._on_delivery(message)
        self._unsettled.add(message)
        self._all_settled.clear()
        self._inbox.put_nowait(message)

    async def _dispatch(self) -> None:
        batch_size = self._settings.batch_size
        while True:
            first = await self._inbox.get()
            if first.redelivered:
                await self._alone(first)
                continue
            if self._careful:
                await self._open_up()
            batch, suspects = [first], list[AbstractIncomingMessage]()
            while len(batch) < batch_size and not self._inbox.empty():
                message = self._inbox.get_nowait()
                (suspects if message.redelivered else batch).append(message)
            await self._slots.acquire()
            task = asyncio.create_task(self._settle(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
            for suspect in suspects:
                await self._alone(suspect)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch_task_failed", exc_info=task.exception())

    async def _alone(self, message: AbstractIncomingMessage) -> None:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
        await self._settle([message])

    # --- one batch -------------------------------------------------------------------------

    async def _settle(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        valid: list[tuple[AbstractIncomingMessage, Envelope]] = []
        rejections = []
        for message in messages:
            if _channel_closed(message):
                # Delivered on a channel that is gone: the broker has requeued it already.
                self._forget(message)
                continue
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
                    self._dead_letter(message, invalid.code, invalid.detail, "InvalidCommand")
                )
                continue
            valid.append((message, Envelope(message_id=str(message.message_id), command=command)))
        if rejections:
            await asyncio.gather(*rejections)
        if valid:
            await self._apply(valid)

    async def _apply(self, batch: Sequence[tuple[AbstractIncomingMessage, Envelope]]) -> None:
        if len(batch) > 1:
            await self._apply_batch(batch)
            return
        with message_context(_context(batch[0][0])):
            await self._apply_batch(batch)

    async def _apply_batch(self, batch: Sequence[tuple[AbstractIncomingMessage, Envelope]]) -> None:
        attempts = 1 if len(batch) > 1 else self._settings.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                outcomes = await self._outcomes([envelope for _, envelope in batch])
            except Exception as error:
                if len(batch) > 1:
                    log.warning("batch_failed_retrying_alone", size=len(batch), error=repr(error))
                    for item in batch:
                        await self._apply([item])
                    return
                message = batch[0][0]
                if attempt < attempts:
                    log.warning(
                        "command_failed_retrying",
                        **_context(message),
                        attempt=attempt,
                        error=repr(error),
                    )
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                log.error("command_failed", **_context(message), attempts=attempt, exc_info=error)
                detail = f"failed {attempt} times, last with {type(error).__name__}: {error}"
                await self._dead_letter(
                    message, PROCESSING_FAILED, self._redact(bounded(detail)), PROCESSING_FAILED
                )
                return
            await self._publish_and_ack(batch, outcomes)
            return

    async def _outcomes(self, envelopes: list[Envelope]) -> list[Outcome]:
        """Run the pipeline until it succeeds or fails for a reason that is not transient."""
        delay = 0.1
        while True:
            try:
                outcomes = await self._pipeline.process(envelopes)
            except TransientFailure as failure:
                if not failure.outage:  # a conflict between transactions: go again at once
                    await asyncio.sleep(random.uniform(0, 0.02))
                    continue
                self._outage.down(failure)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max_backoff)
                continue
            self._outage.up()
            return outcomes

    async def _publish_and_ack(
        self,
        batch: Sequence[tuple[AbstractIncomingMessage, Envelope]],
        outcomes: Sequence[Outcome],
    ) -> None:
        messages = [message for message, _ in batch]
        try:
            publishes = (
                self._publisher.publish_outcome(o, m)
                for m, o in zip(messages, outcomes, strict=True)
            )
            await _broker(asyncio.gather(*publishes))
        except Exception as error:
            # Committed but not confirmed: return the commands; their redelivery is answered
            # from the stored outcomes, with the same event message ids.
            log.warning("publish_failed", count=len(messages), error=repr(error))
            for message in messages:
                await self._requeue(message)
            return
        self._faults.hit(FaultPoint.AFTER_PUBLISH, [envelope.command.code for _, envelope in batch])
        for message, outcome in zip(messages, outcomes, strict=True):
            await self._ack(message)
            log.info("command_processed", **_context(message), outcome=outcome.routing_key)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        try:
            await _broker(self._publisher.dead_letter(message, error, detail, reply_error))
        except Exception as failure:
            log.error("dead_letter_failed", **_context(message), error=repr(failure))
            await asyncio.sleep(1)  # do not spin on a broker that refuses dead letters
            await self._requeue(message)
            return
        await self._ack(message)
        log.warning("command_dead_lettered", **_context(message), error=error, detail=detail)

    # --- settling ----------------------------------------------------------------------------

    def _forget(self, message: AbstractIncomingMessage) -> None:
        self._unsettled.discard(message)
        if not self._unsettled:
            self._all_settled.set()

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await _broker(message.ack())
        except Exception as error:
            # Channel gone: the broker redelivers; dedupe answers it.
            log.info("ack_lost", **_context(message), error=repr(error))
        finally:
            self._forget(message)

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        try:
            await _broker(message.nack(requeue=True))
        except Exception as error:
            log.info("requeue_lost", **_context(message), error=repr(error))
        finally:
            self._forget(message)


async def _broker(call: Awaitable[T]) -> T:
    """Await a call to the broker, turning a CancelledError that does not cancel this task into
    a ConnectionError. aiormq cancels the pending futures of a channel that closed under them:
    that is a broker failure like any other, handled where broker failures are, and must not
    end the dispatcher or a batch. A cancellation of the task itself (a stop) propagates."""
    try:
        return await call
    except asyncio.CancelledError as error:
        task = asyncio.current_task()
        if task is None or task.cancelling() > 0:
            raise
        raise ConnectionError("the channel closed under a call to the broker") from error


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    try:
        return bool(message.channel.is_closed)
    except Exception:
        return True


def _context(message: AbstractIncomingMessage) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "routing_key": message.routing_key,
    }
