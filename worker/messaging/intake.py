"""Intake: deliveries → batches, handed to at most `concurrency` tasks at a time.

- A batch is whatever is already delivered, up to `batch_size`: no waiting to fill one.
- Redelivered messages (the worker may have crashed on one of them) run alone, with nothing
  else in flight, so a command that crashes the process cannot take its neighbours down.
- Careful start: one command at a time (`basic.get`, nothing else held) while the head of the
  queue is redelivered commands (one of them may have crashed the last worker). Were the full
  prefetch held while such a command crashes this process too, every held command would be
  charged a delivery, and healthy commands would reach the delivery limit together with the
  poison. A fresh head (or an empty queue) starts the one consumer, with the full prefetch: in
  the usual case the careful start costs one round trip.
- No new batch while outcomes cannot be published (`ready_to_publish`, the outlet's
  `wait_usable`): what is delivered meanwhile waits, held, instead of being committed and then
  returned to the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiormq.channel import Channel as Underlay

from worker.messaging.connection import broker_call, time_limited
from worker.messaging.settlement import Settlement

log = structlog.stdlib.get_logger(__name__)

CAREFUL_START_RETRY_PAUSE = 1.0
CANCEL_WAIT = 2.0  # seconds a stop waits for cancelled tasks to end

# Runs one batch to its fates (`worker.messaging.batches.BatchRunner.run`).
RunBatch = Callable[[Sequence[AbstractIncomingMessage]], Coroutine[Any, Any, None]]
# Sees each delivery as it arrives (the composition root's metrics and tracing).
DeliveryHook = Callable[[AbstractIncomingMessage], None]


class Intake:
    def __init__(
        self,
        settlement: Settlement,
        run_batch: RunBatch,
        *,
        prefetch: int,
        batch_size: int,
        concurrency: int,
        on_delivery: DeliveryHook | None = None,
        ready_to_publish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._on_delivery = on_delivery
        self._ready_to_publish = ready_to_publish
        self.last_delivery = time.monotonic()  # or the start; the supervisor's starvation check
        self._careful_head = False
        self._settlement = settlement
        self._run_batch = run_batch
        self._prefetch = prefetch
        self._batch_size = batch_size
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._consumer_tag: str | None = None
        self._underlay: Underlay | None = None
        self._consumer_registered = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None

    async def start(self, queue: AbstractQueue, channel: AbstractChannel) -> None:
        self._queue, self._channel = queue, channel
        self._stopping = False
        self._dispatcher = asyncio.create_task(self._start_then_dispatch(), name="dispatcher")

    @property
    def dispatcher(self) -> asyncio.Task[None]:
        """Runs until cancelled; ends by itself only through a bug."""
        assert self._dispatcher is not None, "start() first"
        return self._dispatcher

    @property
    def consuming(self) -> bool:
        """A consumer is registered on a channel that is open, and the broker has not cancelled
        it (it does when the queue is deleted, or its node goes away)."""
        if self._consumer_tag is None or self._channel.is_closed:
            return False
        return self._underlay is None or self._consumer_tag in self._underlay.consumers

    @property
    def working(self) -> bool:
        """Consuming, or the careful start is handling a redelivered head (and so is busy on
        the queue's behalf, one command at a time)."""
        return self.consuming or (self._careful_head and not self._channel.is_closed)

    @property
    def prefetch(self) -> int:
        return self._prefetch

    async def wait_consuming(self) -> None:
        """Returns once the careful start is over and the consumer is registered."""
        await self._consumer_registered.wait()

    async def stop_deliveries(self, within: float) -> None:
        """Cancel the consumer: the broker delivers nothing more."""
        self._stopping = True  # a careful start takes no more
        if self._consumer_tag is None:
            return
        try:
            cancel = self._queue.cancel(self._consumer_tag)
            await broker_call(time_limited(cancel, within))
        except Exception as error:  # the channel may be gone; nothing is delivered then
            log.warning("consumer_cancel_failed", error=repr(error))

    async def cancel(self) -> None:
        """Cancel the batches in flight and the dispatcher, and wait for them to end (their
        settlement guards return what they did not settle)."""
        tasks = [*self._in_flight, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        # Bounded: a task cancelled inside an aiormq call (a `basic.get` of the careful start,
        # say) may take its time to end, and the stop must end within its grace period. What
        # a task left unsettled is returned by the caller all the same.
        _, pending = await asyncio.wait(tasks, timeout=CANCEL_WAIT)
        if pending:
            log.warning("tasks_still_ending", count=len(pending))

    async def _start_then_dispatch(self) -> None:
        while True:
            try:
                await self._careful_start()
                break
            except Exception as error:  # the channel may be gone: try again once it is back
                log.warning("careful_start_failed", error=repr(error))
                await asyncio.sleep(CAREFUL_START_RETRY_PAUSE)
        await self._dispatch()

    async def _careful_start(self) -> None:
        """Take the head of the queue alone while it is redelivered, then consume with the
        full prefetch (the fresh head first)."""
        while not self._stopping:
            head = await broker_call(self._queue.get(no_ack=False, fail=False))
            if head is not None and head.redelivered and not self._stopping:
                self._careful_head = True
                try:
                    self._note(head)  # the one receive path, taken alone here
                    await self._wait_ready_to_publish()
                    await self._run_batch([head])
                finally:
                    self._careful_head = False
                continue
            if head is not None:
                await self._receive(head)
            if not self._stopping:
                await broker_call(self._channel.set_qos(prefetch_count=self._prefetch))
                self._consumer_tag = await broker_call(self._queue.consume(self._receive))
                underlay = await self._channel.get_underlay_channel()
                self._underlay = underlay if isinstance(underlay, Underlay) else None
                self._consumer_registered.set()
            return

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        self._note(message)
        self._inbox.put_nowait(message)

    def _note(self, message: AbstractIncomingMessage) -> None:
        """Every delivery, the careful start's included: seen by the hook, counted as
        unsettled."""
        self.last_delivery = time.monotonic()
        if self._on_delivery is not None:
            self._on_delivery(message)
        self._settlement.receive(message)

    async def _dispatch(self) -> None:
        while True:
            first = await self._inbox.get()
            await self._wait_ready_to_publish()
            if first.redelivered:
                await self._alone(first)
                continue
            # A slot first, then the batch: what arrives while every slot is busy joins it,
            # instead of waiting behind a batch of one formed too early.
            await self._slots.acquire()
            batch, suspects = [first], list[AbstractIncomingMessage]()
            while len(batch) < self._batch_size and not self._inbox.empty():
                message = self._inbox.get_nowait()
                (suspects if message.redelivered else batch).append(message)
            task = asyncio.create_task(self._run_batch(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
            for suspect in suspects:
                await self._alone(suspect)

    async def _wait_ready_to_publish(self) -> None:
        if self._ready_to_publish is not None:
            await self._ready_to_publish()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch_task_failed", exc_info=task.exception())

    async def _alone(self, message: AbstractIncomingMessage) -> None:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
        await self._run_batch([message])
