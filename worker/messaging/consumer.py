"""The consumer's lifecycle: start consuming, stop within a grace period.

Ack policy (decided by this package, not by aio-pika's `message.process()`):
- ack only after the batch committed and every outcome was confirmed by the broker;
- invalid command → a confirmed dead letter with its reason, then ack;
- transient fault (database unreachable, transaction conflict) → hold the messages and retry;
  nothing is nacked, so an outage does not burn the queue's delivery limit;
- unexpected failure → the batch is split and each command retried alone; one that still fails
  after `max_attempts` is dead-lettered as `ProcessingFailed`;
- stop → no new deliveries, finish what was delivered within the grace period, return the rest.

Where each lives, in the order a delivery meets them: `intake` (deliveries → batches, careful
start), `batches` (one batch: decode → retry → publish → settle), `retry` (the retry policy),
`publisher` (what is sent, confirmed), `settlement` (exactly one fate per delivery).
`build_consumer` wires them; the composition root (`worker.entrypoints.run`) and the in-process
tests (`tests/support/in_process.py`) both call it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue

from worker.app.pipeline import CommandPipeline
from worker.messaging.batches import BatchRunner
from worker.messaging.connection import broker_call, time_limited
from worker.messaging.intake import DeliveryHook, Intake
from worker.messaging.publisher import OutcomePublisher
from worker.messaging.retry import RetryPolicy
from worker.messaging.settlement import Settlement
from worker.settings import Settings

log = structlog.stdlib.get_logger(__name__)

SETTLE_PAUSE = 0.5  # at most, between the last ack of a stop and closing the channel
CLOSING_TIME = 0.3  # what closing the connections and exiting the process take, about


def build_consumer(
    settings: Settings,
    pipeline: CommandPipeline,
    publisher: OutcomePublisher,
    *,
    retry: RetryPolicy,
    redact: Callable[[str], str] = lambda text: text,
    on_delivery: DeliveryHook | None = None,
    ready_to_publish: Callable[[], Awaitable[None]] | None = None,
) -> Consumer:
    """A consumer, wired: intake → batches (pipeline under `retry`, then `publisher`) →
    settlement. `on_delivery` sees every delivery (metrics, traces); `ready_to_publish` holds
    the intake while outcomes cannot be published (the outlet's `wait_usable`)."""
    settlement = Settlement()
    batches = BatchRunner(pipeline, publisher, settlement, retry, redact)
    intake = Intake(
        settlement,
        batches.run,
        prefetch=settings.prefetch,
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
        on_delivery=on_delivery,
        ready_to_publish=ready_to_publish,
    )
    return Consumer(intake, settlement)


class Consumer:
    def __init__(self, intake: Intake, settlement: Settlement) -> None:
        self._intake = intake
        self._settlement = settlement

    async def start(self, queue: AbstractQueue, channel: AbstractChannel) -> None:
        self._channel = channel
        await self._intake.start(queue, channel)

    @property
    def in_flight(self) -> int:
        """Messages delivered and not yet settled."""
        return self._settlement.unsettled

    @property
    def consuming(self) -> bool:
        return self._intake.consuming

    @property
    def working(self) -> bool:
        """Consuming, or busy with the careful start's redelivered head."""
        return self._intake.working

    @property
    def idle_for(self) -> float:
        """Seconds since the last delivery (or since the start)."""
        return time.monotonic() - self._intake.last_delivery

    @property
    def has_room(self) -> bool:
        """Fewer deliveries held than the prefetch: the broker would deliver more if it could."""
        return self._settlement.unsettled < self._intake.prefetch

    @property
    def channel_closed(self) -> bool:
        return self._channel.is_closed

    async def wait_consuming(self) -> None:
        """Returns once the broker delivers to this consumer (after the careful start)."""
        await self._intake.wait_consuming()

    async def stop(self, grace_period: float) -> int:
        """Stop taking deliveries, finish what was delivered, return the rest. Returns how
        many messages had to be returned to the queue."""
        # One deadline for the whole stop, the consumer's cancel included, less a reserve for
        # returning the unfinished and closing the connections: the process exits within its
        # grace period, before an orchestrator's SIGKILL could turn a return into a redelivery.
        loop = asyncio.get_running_loop()
        end = loop.time() + grace_period
        deadline = end - min(2.0, grace_period * 0.2)
        await self._intake.stop_deliveries(within=min(5.0, max(deadline - loop.time(), 0.1)))
        try:
            async with asyncio.timeout_at(deadline):
                settled = asyncio.create_task(self._settlement.all_settled())
                waits: set[asyncio.Future[Any]] = {settled, self._intake.dispatcher}
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    settled.cancel()
        except TimeoutError:
            log.warning("grace_period_elapsed", unfinished=self._settlement.unsettled)
        requeued_before = self._settlement.requeued
        await self._intake.cancel()
        await self._settlement.return_unsettled()
        returned = self._settlement.requeued - requeued_before
        # Half of what is left, less the time closing the connection and exiting take.
        left = end - loop.time() - CLOSING_TIME
        await self._close_channel(pause=min(SETTLE_PAUSE, max(0.0, left / 2)))
        return returned

    async def abandon(self) -> None:
        """Its connection is gone (or about to be closed, to start anew): end its tasks at once.
        What it held is the broker's again; nothing is sent."""
        await self._intake.cancel()
        await self._settlement.return_unsettled()

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
            await broker_call(time_limited(self._channel.close(), 5))
        except Exception as error:
            log.warning("channel_close_failed", error=repr(error))

    @property
    def dispatcher_ended(self) -> bool:
        """The dispatcher runs until cancelled; ended by itself, it is a bug."""
        return self._intake.dispatcher.done()

    def raise_dispatcher_failure(self) -> None:
        dispatcher = self._intake.dispatcher
        cause = None if dispatcher.cancelled() else dispatcher.exception()
        raise RuntimeError("the dispatcher stopped unexpectedly") from cause
