"""coupon.worker.dead as an operator sees it: read without losing, re-drive, purge.

Reading never takes a letter away by itself. `DeadLetterQueue.snapshot` takes the letters that
are in the queue when it starts with `basic.get` and manual acknowledgement, and holds them
unacknowledged: a letter is removed only by an explicit `remove()` (an ack), and every letter
not removed returns to the queue when the channel closes, however the process ends (a crash or
a SIGKILL included, the broker returns what a dead connection held).

Re-drive publishes a letter back to coupon.commands with its routing key, properties and
`message_id`, waits for the broker's confirm (the publish is mandatory: an unroutable one
raises), and only then acknowledges the letter. A re-drive interrupted between the two leaves
the letter in the queue *and* re-driven; running it again re-drives it once more, which the
worker answers from the stored outcome of that `message_id`: nothing is lost, nothing applied
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue

from contracts import names
from contracts.names import Topology
from worker.messaging.batches import PROCESSING_FAILED

# A quorum queue applies acks after the consumer-down that closing their channel causes, so
# acks sent just before a close can be lost and their letters returned (see the consumer's
# `_close_channel`, measured on RabbitMQ 3.10): a short pause before closing lets them land.
SETTLE_PAUSE: Final = 0.5
# Reasons RabbitMQ gives in x-death when it dead-letters a message itself.
BROKER_REASONS: Final = frozenset({"delivery_limit", "rejected", "expired", "maxlen"})
# Headers that describe a letter's death, not the command: dropped when it is re-driven.
DEATH_HEADERS: Final = frozenset(
    {
        names.ERROR_HEADER,
        names.ERROR_DETAIL_HEADER,
        names.DEAD_LETTERED_AT_HEADER,
        "x-death",
        "x-first-death-reason",
        "x-first-death-queue",
        "x-first-death-exchange",
        "x-last-death-reason",
        "x-last-death-queue",
        "x-last-death-exchange",
        "x-delivery-count",
    }
)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


@dataclass(eq=False)
class DeadLetter:
    """One letter, held unacknowledged until `remove()` or the end of its snapshot."""

    message: AbstractIncomingMessage
    removed: bool = field(default=False, init=False)

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.message.headers or {}

    @property
    def message_id(self) -> str:
        return self.message.message_id or ""

    @property
    def routing_key(self) -> str:
        return self.message.routing_key or ""

    @property
    def deaths(self) -> list[Mapping[str, Any]]:
        found = self.headers.get("x-death")
        return [d for d in found if isinstance(d, Mapping)] if isinstance(found, list) else []

    @property
    def error(self) -> str:
        """x-error for a letter of the worker; the broker's reason for one of its own."""
        if names.ERROR_HEADER in self.headers:
            return _text(self.headers[names.ERROR_HEADER])
        if self.deaths:
            return _text(self.deaths[-1].get("reason")) or "unknown"
        return _text(self.headers.get("x-first-death-reason")) or "unknown"

    @property
    def detail(self) -> str:
        if names.ERROR_DETAIL_HEADER in self.headers:
            return _text(self.headers[names.ERROR_DETAIL_HEADER])
        if self.deaths:
            death = self.deaths[-1]
            return f"dead-lettered by RabbitMQ from {_text(death.get('queue'))}"
        return ""

    @property
    def death_count(self) -> int:
        counted = sum(int(d.get("count") or 0) for d in self.deaths)
        by_worker = 1 if names.ERROR_HEADER in self.headers else 0
        return counted + by_worker

    @property
    def first_death_at(self) -> datetime | None:
        times = [d.get("time") for d in self.deaths]
        times.append(self.headers.get(names.DEAD_LETTERED_AT_HEADER))
        found = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in times if isinstance(t, datetime)]
        return min(found, default=None)

    def age_seconds(self, now: datetime) -> float | None:
        first = self.first_death_at
        return None if first is None else max(0.0, (now - first).total_seconds())

    @property
    def redrivable(self) -> bool:
        """Failed, not invalid: it may succeed once its cause is fixed. An invalid command would
        only be dead-lettered again (and a MissingMessageId one carries an id that the client
        library, not its sender, gave it)."""
        return self.error == PROCESSING_FAILED or self.error in BROKER_REASONS

    def summary(self, now: datetime) -> dict[str, Any]:
        first = self.first_death_at
        age = self.age_seconds(now)
        return {
            "message_id": self.message_id,
            "routing_key": self.routing_key,
            "error": self.error,
            "detail": self.detail,
            "deaths": self.death_count,
            "first_death_at": first.isoformat() if first else None,
            "age_seconds": None if age is None else round(age, 1),
            "redrivable": self.redrivable,
        }

    def redrive_message(self) -> Message:
        source = self.message
        return Message(
            source.body,
            headers={k: v for k, v in self.headers.items() if k not in DEATH_HEADERS},
            content_type=source.content_type,
            content_encoding=source.content_encoding,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=source.priority,
            correlation_id=source.correlation_id,
            reply_to=source.reply_to,
            message_id=source.message_id,  # the idempotency key: what makes re-driving safe
            timestamp=source.timestamp,
            type=source.type,
            app_id=source.app_id,
        )

    async def remove(self) -> None:
        await self.message.ack()
        self.removed = True


class Snapshot:
    """The letters in the queue when it was opened (at most a limit), read one by one and held
    until the snapshot closes."""

    def __init__(self, queue: AbstractQueue, total: int) -> None:
        self._queue = queue
        self.total = total
        self.letters: list[DeadLetter] = []

    async def read(self) -> AsyncIterator[DeadLetter]:
        for _ in range(self.total - len(self.letters)):
            message = await self._queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letter = DeadLetter(message)
            self.letters.append(letter)
            yield letter


class DeadLetterQueue:
    def __init__(self, connection: AbstractConnection, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology

    @contextlib.asynccontextmanager
    async def snapshot(self, limit: int) -> AsyncIterator[Snapshot]:
        """Only what is there now: a letter that arrives meanwhile (a re-driven command failing
        again, say) waits for the next run instead of being met twice. On exit, every letter
        not removed returns to the queue, in its place."""
        channel = await self._connection.channel()
        snapshot: Snapshot | None = None
        try:
            queue = await channel.declare_queue(self._topology.dead_queue, passive=True)
            snapshot = Snapshot(queue, min(limit, int(queue.declaration_result.message_count or 0)))
            yield snapshot
        finally:
            if snapshot is not None and any(letter.removed for letter in snapshot.letters):
                await asyncio.sleep(SETTLE_PAUSE)
            await channel.close()

    async def redrive(self, letters: Iterable[DeadLetter]) -> AsyncIterator[DeadLetter]:
        """Publish each letter to coupon.commands, confirmed, then remove it; yields each one
        done. Raises (leaving the rest in the queue) on the first publish the broker refuses."""
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            commands = await channel.get_exchange(self._topology.commands_exchange, ensure=True)
            for letter in letters:
                await commands.publish(letter.redrive_message(), letter.routing_key)
                await letter.remove()
                yield letter
        finally:
            await channel.close()
