"""Intake: deliveries → batches, handed to at most `concurrency` tasks at a time.

- A batch is whatever is already delivered, up to `batch_size`: no waiting to fill one.
- Redelivered messages (the worker may have crashed on one of them) run alone, with nothing
  else in flight, so a command that crashes the process cannot take its neighbours down.
- Careful start: one delivery at a time while the head of the queue is redelivered commands
  (one of them may have crashed the last worker). Were the full prefetch held while such a
  command crashes this process too, every held command would be charged a delivery, and
  healthy commands would reach the delivery limit together with the poison. The first fresh
  command opens the full prefetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from worker.messaging.connection import broker_call
from worker.messaging.settlement import Settlement

log = structlog.stdlib.get_logger("worker.consumer")

HandleBatch = Callable[[Sequence[AbstractIncomingMessage]], Coroutine[Any, Any, None]]
# Sees each delivery as it arrives (the composition root's metrics and tracing).
DeliveryHook = Callable[[AbstractIncomingMessage], None]


class Intake:
    def __init__(
        self,
        settlement: Settlement,
        handle: HandleBatch,
        *,
        prefetch: int,
        batch_size: int,
        concurrency: int,
        on_delivery: DeliveryHook | None = None,
    ) -> None:
        self._on_delivery = on_delivery
        self._settlement = settlement
        self._handle = handle
        self._prefetch = prefetch
        self._batch_size = batch_size
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._careful = True
        self._consumer_tag: str | None = None
        self._dispatcher: asyncio.Task[None] | None = None

    async def start(self, queue: AbstractQueue, channel: AbstractChannel) -> None:
        self._queue, self._channel = queue, channel
        self._careful = True
        await channel.set_qos(prefetch_count=1)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="dispatcher")
        self._consumer_tag = await queue.consume(self._receive)

    @property
    def dispatcher(self) -> asyncio.Task[None]:
        """Runs until cancelled; ends by itself only through a bug."""
        assert self._dispatcher is not None, "start() first"
        return self._dispatcher

    @property
    def consuming(self) -> bool:
        """A consumer is registered on a channel that is open."""
        return self._consumer_tag is not None and not self._channel.is_closed

    async def stop_deliveries(self, within: float) -> None:
        """Cancel the consumer: the broker delivers nothing more."""
        if self._consumer_tag is None:
            return
        try:
            cancel = self._queue.cancel(self._consumer_tag)
            await broker_call(asyncio.wait_for(cancel, within))
        except Exception as error:  # the channel may be gone; nothing is delivered then
            log.warning("consumer_cancel_failed", error=repr(error))

    async def cancel(self) -> None:
        """Cancel the batches in flight and the dispatcher, and wait for them to end (their
        settlement guards return what they did not settle)."""
        tasks = [*self._in_flight, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _open_up(self) -> None:
        """Leave the careful start: consume again with the full prefetch (a prefetch applies
        to consumers created after it is set), then cancel the one-at-a-time consumer."""
        careful_tag = self._consumer_tag
        try:
            await broker_call(self._channel.set_qos(prefetch_count=self._prefetch))
            self._consumer_tag = await broker_call(self._queue.consume(self._receive))
            self._careful = False
            if careful_tag is not None:
                await broker_call(self._queue.cancel(careful_tag))
        except Exception as error:
            # The channel may be gone; the next fresh command retries.
            log.warning("prefetch_open_failed", error=repr(error))

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        if self._on_delivery is not None:
            self._on_delivery(message)
        self._settlement.receive(message)
        self._inbox.put_nowait(message)

    async def _dispatch(self) -> None:
        while True:
            first = await self._inbox.get()
            if first.redelivered:
                await self._alone(first)
                continue
            if self._careful:
                await self._open_up()
            batch, suspects = [first], list[AbstractIncomingMessage]()
            while len(batch) < self._batch_size and not self._inbox.empty():
                message = self._inbox.get_nowait()
                (suspects if message.redelivered else batch).append(message)
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(batch))
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
        await self._handle([message])
