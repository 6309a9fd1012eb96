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

Batch-shaped: `answer` publishes a batch's outcomes with one confirm wait and then acknowledges
the batch, with one `multiple=True` ack per channel when the delivery tags allow it (`_ack_all`).
One line per batch at info; the per-command lines are at debug.

Over 200 lines: the guard, the fates and the unsettled set are one promise (the multiple ack
reads the unsettled set), kept together so that it can be read (and checked) in one place.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import structlog
from aio_pika.abc import AbstractIncomingMessage

from worker.app.outcomes import Outcome
from worker.messaging.connection import broker_call

log = structlog.stdlib.get_logger("worker.consumer")
# The standard library's logger of the same name decides the level (worker/logs.py); asked
# directly, it answers whether or not structlog is configured (in-process tests do not).
_levels = logging.getLogger("worker.consumer")

DEAD_LETTER_RETRY_PAUSE = 1.0  # do not spin on a broker that refuses dead letters


class OutcomePublisher(Protocol):
    """What settlement needs of the publisher (`worker.messaging.publisher.Publisher`)."""

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None: ...

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None: ...


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
    def __init__(self, publisher: OutcomePublisher) -> None:
        self._publisher = publisher
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
            await self._requeue_all(left)
        except BaseException:  # a stop cancelled the block: return what it did not settle
            await self._requeue_all([d for d in deliveries if d.fate is None])
            raise
        else:
            left = [d for d in deliveries if d.fate is None]
            if left:
                log.error("delivery_left_unsettled", returned=len(left))
                await self._requeue_all(left)

    # --- the fates ---------------------------------------------------------------------------

    async def answer(self, deliveries: Sequence[Delivery], outcomes: Sequence[Outcome]) -> None:
        """Publish each delivery's outcome, then acknowledge them all once every publish is
        confirmed; return them all to the queue if one is not."""
        answers = [(d.message, o) for d, o in zip(deliveries, outcomes, strict=True)]
        try:
            await broker_call(self._publisher.publish_outcomes(answers))
        except Exception as error:
            # Committed but not confirmed (the outlet has tried again on every new connection
            # while the commands were held): return them; their redelivery is answered from
            # the stored outcomes, with the same event message ids.
            log.warning("publish_failed", count=len(deliveries), error=repr(error))
            await self._requeue_all(deliveries)
            return
        await self._ack_all(deliveries)
        log.info("batch_answered", count=len(deliveries))
        if _levels.isEnabledFor(logging.DEBUG):
            for delivery, outcome in zip(deliveries, outcomes, strict=True):
                log.debug("command_processed", **delivery.context, outcome=outcome.routing_key)

    async def dead_letter(
        self, delivery: Delivery, error: str, detail: str, reply_error: str
    ) -> None:
        """A confirmed copy in the dead-letter queue (and a reply to the sender), then an ack;
        returned to the queue, after a pause, if the broker does not confirm the copy."""
        try:
            await broker_call(
                self._publisher.dead_letter(delivery.message, error, detail, reply_error)
            )
        except Exception as failure:
            # Refused by the broker (the outlet tries a lost connection again by itself): do
            # not spin on it.
            log.error("dead_letter_failed", **delivery.context, error=repr(failure))
            await asyncio.sleep(DEAD_LETTER_RETRY_PAUSE)
            await self.requeue(delivery)
            return
        await self.ack(delivery, Fate.DEAD_LETTERED)
        log.warning("command_dead_lettered", **delivery.context, error=error, detail=detail)

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

    async def _ack_all(self, deliveries: Sequence[Delivery]) -> None:
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

    async def _requeue_all(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            if delivery.fate is None:
                await self.requeue(delivery)
