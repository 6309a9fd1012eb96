"""The relay: publishes staged commands in staging order, then marks them sent.

    relay = Relay(outbox, sessions, AmqpPublisher(amqp_url, prefix))
    task = asyncio.create_task(relay.run())      # or: coupon-contracts relay (the command)

One batch is one transaction: lock the oldest unsent rows (`FOR UPDATE SKIP LOCKED`, so that
several relays share the work without waiting on each other), publish them one by one in
staging order, each confirmed by the broker, then mark them sent and commit. A relay that dies
after a publish and before the commit leaves its rows unsent and unlocked: they are published
again, with the same `message_id`, which the worker answers with the outcome it stored. Marking
before publishing would lose a command to such a crash; this order can only repeat one.

Order: one relay publishes in staging order. Two relays take disjoint batches, so a batch may
reach the broker before an older one still in flight in the other relay; commands that must not
overtake each other go through one relay. A parked row is skipped, and the rows behind it go on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.outbox.publisher import Publisher, classify, reason
from contracts.outbox.staging import Outbox, checked, message_of
from contracts.validation import InvalidCommand

log = logging.getLogger("contracts.outbox")

# A database that cannot be reached now (the relay waits), not one that refuses a statement.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, OSError)


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    """How a relay paces itself. Every figure is in seconds unless its name says otherwise."""

    batch_size: int = 100  # rows per transaction
    poll_interval: float = 0.5  # pause when nothing was staged
    prune_after: timedelta = timedelta(days=7)  # sent rows older than this are deleted
    prune_every: float = 60.0
    retry_first: float = 0.5  # first wait after a failure, doubled up to retry_most
    retry_most: float = 30.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_size > 10_000:
            raise ValueError("batch_size: from 1 to 10,000 rows")
        if min(self.poll_interval, self.prune_every, self.retry_first) <= 0:
            raise ValueError("poll_interval, prune_every and retry_first must be positive")
        if self.retry_most < self.retry_first:
            raise ValueError("retry_most must be at least retry_first")
        if self.prune_after < timedelta(0):
            raise ValueError("prune_after must not be negative")


@dataclass(slots=True)
class Batch:
    """What one batch did: the message_ids published (in order) and those parked."""

    published: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    unavailable: str | None = None  # why the batch stopped early: nothing more can be sent now


class Relay:
    def __init__(
        self,
        outbox: Outbox,
        sessions: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        policy: RelayPolicy | None = None,
    ) -> None:
        self.outbox = outbox
        self.sessions = sessions
        self.publisher = publisher
        self.policy = policy or RelayPolicy()

    async def relay_batch(self) -> Batch:
        """Publish the oldest unsent rows this relay can lock, up to one batch. Stops early,
        keeping what is not published yet staged, when the broker is unavailable."""
        c = self.outbox.table.c
        batch = Batch()
        async with self.sessions.begin() as session:
            rows = (
                await session.execute(
                    select(c.id, c.message_id, c.routing_key, c.body, c.correlation_id)
                    .where(c.sent_at.is_(None), c.parked_at.is_(None))
                    .order_by(c.id)
                    .limit(self.policy.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            parked: dict[int, str] = {}
            sent: list[int] = []
            for row in rows:
                message = message_of(row.routing_key, row.body, row.message_id, row.correlation_id)
                try:
                    await self.publisher.send(
                        checked(message),
                        message_id=row.message_id,
                        correlation_id=row.correlation_id,
                    )
                except InvalidCommand as error:
                    parked[row.id] = f"{error.code}: {error.detail}"
                except Exception as error:
                    kind = classify(error)
                    if kind is None:
                        raise
                    if kind == "unavailable":
                        batch.unavailable = reason(error)
                        break
                    parked[row.id] = reason(error)
                else:
                    sent.append(row.id)
                    batch.published.append(row.message_id)
                    continue
                batch.parked.append(row.message_id)
                log.error(
                    "outbox_row_parked message_id=%s reason=%s", row.message_id, parked[row.id]
                )
            if sent:
                await session.execute(
                    update(self.outbox.table).where(c.id.in_(sent)).values(sent_at=func.now())
                )
            for row_id, why in parked.items():
                await session.execute(
                    update(self.outbox.table)
                    .where(c.id == row_id)
                    .values(parked_at=func.now(), park_reason=why)
                )
        return batch

    async def prune(self) -> int:
        """Delete sent rows older than the policy's `prune_after`; returns how many."""
        pruned = 0
        while True:
            async with self.sessions.begin() as session:
                count = await self.outbox.prune(session, older_than=self.policy.prune_after)
            pruned += count
            if count < 10_000:
                return pruned

    async def run(self) -> None:
        """Relay until cancelled. A broker or database that cannot be reached is waited for
        (logged once when it goes, once when it comes back); nothing staged is lost meanwhile."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        delay = self.policy.retry_first
        trouble: str | None = None  # what the relay is waiting for, while it waits
        while True:
            try:
                if loop.time() >= next_prune:
                    pruned = await self.prune()
                    if pruned:
                        log.info("outbox_pruned rows=%d", pruned)
                    next_prune = loop.time() + self.policy.prune_every
                batch = await self.relay_batch()
            except DATABASE_UNAVAILABLE as error:
                trouble = self._waiting(trouble, "database", reason(error), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.retry_most)
                continue
            if batch.unavailable is not None:
                trouble = self._waiting(trouble, "broker", batch.unavailable, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.retry_most)
                continue
            if trouble is not None:
                log.warning("outbox_%s_reachable_again", trouble)
                trouble = None
            delay = self.policy.retry_first
            if batch.published:
                log.debug("outbox_published count=%d", len(batch.published))
            if len(batch.published) + len(batch.parked) < self.policy.batch_size:
                await asyncio.sleep(self.policy.poll_interval)

    @staticmethod
    def _waiting(trouble: str | None, what: str, why: str, delay: float) -> str:
        if trouble != what:
            log.warning("outbox_%s_unreachable reason=%s; waiting, nothing is lost", what, why)
        else:
            log.info("outbox_%s_still_unreachable reason=%s retry_in=%.1f", what, why, delay)
        return what
