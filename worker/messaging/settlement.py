"""Settlement: every delivery reaches exactly one fate — acknowledged, returned to the queue,
or dead-lettered (confirmed by the broker, then acknowledged) — whatever happens in between.

`guard(messages)` is the one place that promises it: a delivery the block left unsettled is
returned to the queue, whether the block raised (an unexpected exception is logged and does
not escape: it must not end the batch's task, nor the dispatcher), was cancelled by a stop
(returned, then the cancellation goes on), or simply forgot it (a bug, logged). A fate is
decided once: a second decision raises instead of sending a broker a second ack or nack for
one delivery tag, which would close the channel.

The unsettled set (every delivery received and not yet settled) is what a stop waits for, and
what it returns to the queue when its grace period runs out.

Batch-shaped: `ack_all` acknowledges a batch with one `multiple=True` ack per channel when the
delivery tags allow it. Settlement sends nothing but acks and nacks: what is published before a
fate (outcomes, dead letters) is the batch's business (`worker.messaging.batches`).

Over 200 lines: the guard, the fates and the unsettled set are one promise (the multiple ack
reads the unsettled set), kept together so that it can be read (and checked) in one place.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

from worker.messaging.connection import broker_call

log = structlog.stdlib.get_logger(__name__)


class Fate(enum.Enum):
    ACKNOWLEDGED = "acknowledged"
    REQUEUED = "requeued"
    DEAD_LETTERED = "dead-lettered"
    RETURNED_BY_BROKER = "returned by the broker"  # its channel closed: requeued already


class AlreadySettled(RuntimeError):
    """A second fate for one delivery: a bug, refused before it reaches the broker."""


class Delivery:
    """One delivered message and the fate decided for it."""

    __slots__ = ("fate", "message")

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self.message = message
        self.fate: Fate | None = None

    @property
    def context(self) -> dict[str, Any]:
        """What identifies the message in a log line."""
        return {
            "message_id": self.message.message_id,
            "correlation_id": self.message.correlation_id,
            "routing_key": self.message.routing_key,
        }

    @property
    def channel(self) -> object | None:
        """The broker channel it came on (delivery tags count per channel), None if closed."""
        return _channel_of(self.message)

    @property
    def channel_closed(self) -> bool:
        return not held(self.message)

    def _decide(self, fate: Fate) -> None:
        if self.fate is not None:
            raise AlreadySettled(f"{self.message.message_id!r} is {self.fate.value} already")
        self.fate = fate


def held(message: AbstractIncomingMessage) -> bool:
    """Whether the channel the message came on is open: it is still ours to settle (once it
    closed, the broker has put the message back)."""
    try:
        return not message.channel.is_closed
    except Exception:
        return False


def _channel_of(message: AbstractIncomingMessage) -> object | None:
    try:
        return message.channel
    except Exception:  # closed: its deliveries are the broker's again
        return None


class Settlement:
    def __init__(self) -> None:
        self._unsettled: set[AbstractIncomingMessage] = set()
        self._all_settled = asyncio.Event()
        self._all_settled.set()
        self.requeued = 0  # how many deliveries were returned to the queue, ever

    # --- the unsettled set -------------------------------------------------------------------

    def receive(self, message: AbstractIncomingMessage) -> None:
        """Count a delivery as unsettled until a fate is decided for it."""
        self._unsettled.add(message)
        self._all_settled.clear()

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    async def all_settled(self) -> None:
        await self._all_settled.wait()

    async def return_unsettled(self) -> None:
        """Return to the queue whatever is still unsettled (a stop, after its grace period)."""
        for message in list(self._unsettled):
            await self.requeue(Delivery(message))

    def _forget(self, message: AbstractIncomingMessage) -> None:
        self._unsettled.discard(message)
        if not self._unsettled:
            self._all_settled.set()

    # --- the guard ---------------------------------------------------------------------------

    @asynccontextmanager
    async def guard(
        self, messages: Sequence[AbstractIncomingMessage]
    ) -> AsyncIterator[list[Delivery]]:
        """One `Delivery` per message; each leaves the block with exactly one fate."""
        deliveries = [Delivery(message) for message in messages]
        try:
            yield deliveries
        except Exception as error:
            left = [d for d in deliveries if d.fate is None]
            log.error("delivery_failed_unexpectedly", returned=len(left), exc_info=error)
            await self.requeue_all(left)
        except BaseException:  # a stop cancelled the block: return what it did not settle
            await self.requeue_all([d for d in deliveries if d.fate is None])
            raise
        else:
            left = [d for d in deliveries if d.fate is None]
            if left:
                log.error("delivery_left_unsettled", returned=len(left))
                await self.requeue_all(left)

    # --- the fates ---------------------------------------------------------------------------

    def returned_by_broker(self, delivery: Delivery) -> None:
        """Delivered on a channel that is gone: the broker has requeued it already."""
        delivery._decide(Fate.RETURNED_BY_BROKER)
        self._forget(delivery.message)

    async def ack(self, delivery: Delivery, fate: Fate = Fate.ACKNOWLEDGED) -> None:
        delivery._decide(fate)
        try:
            await broker_call(delivery.message.ack())
        except Exception as error:
            # Channel gone: the broker redelivers; dedupe answers it.
            log.info("ack_lost", **delivery.context, error=repr(error))
        finally:
            self._forget(delivery.message)

    async def requeue(self, delivery: Delivery) -> None:
        if delivery.channel_closed:
            # Its channel is gone: the broker has put it back already, a nack could not be sent
            # (and would only be logged as lost, once for each of a whole prefetch).
            self.returned_by_broker(delivery)
            return
        delivery._decide(Fate.REQUEUED)
        self.requeued += 1
        try:
            await broker_call(delivery.message.nack(requeue=True))
        except Exception as error:
            log.info("requeue_lost", **delivery.context, error=repr(error))
        finally:
            self._forget(delivery.message)

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge a batch: one `multiple=True` ack per channel where the delivery tags
        allow it, else one ack each. They allow it only when every unsettled delivery on that
        channel with a tag up to the batch's highest is this batch's: concurrent batches
        interleave tags, and an ack must never settle a delivery another batch still holds."""
        by_channel: dict[int, list[Delivery]] = {}
        for delivery in deliveries:
            channel = delivery.channel
            if channel is None or delivery.message.delivery_tag is None:
                await self.ack(delivery)
            else:
                by_channel.setdefault(id(channel), []).append(delivery)
        for group in by_channel.values():
            if len(group) > 1 and self._covers(group):
                await self._ack_up_to(group)
            else:
                for delivery in group:
                    await self.ack(delivery)

    def _covers(self, group: Sequence[Delivery]) -> bool:
        """Whether acknowledging up to the group's highest tag settles the group and no more."""
        channel = group[0].channel
        top = max(d.message.delivery_tag or 0 for d in group)
        mine = {id(d.message) for d in group}
        return all(
            id(message) in mine
            for message in self._unsettled
            if (message.delivery_tag or 0) <= top and _channel_of(message) is channel
        )

    async def _ack_up_to(self, group: Sequence[Delivery]) -> None:
        highest = max(group, key=lambda d: d.message.delivery_tag or 0)
        for delivery in group:
            delivery._decide(Fate.ACKNOWLEDGED)
        try:
            await broker_call(highest.message.ack(multiple=True))
        except Exception as error:
            log.info("ack_lost", count=len(group), error=repr(error))
        finally:
            for delivery in group:
                self._forget(delivery.message)

    async def requeue_all(self, deliveries: Sequence[Delivery]) -> None:
        """Return to the queue each of `deliveries` that has no fate yet."""
        for delivery in deliveries:
            if delivery.fate is None:
                await self.requeue(delivery)
