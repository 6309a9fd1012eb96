"""An inbox for services that consume the coupon worker's events (the `inbox` extra: SQLAlchemy 2
async on PostgreSQL).

An event comes again after the consumer's crash or a broker failover, and the worker itself
publishes an outcome again, with the same event `message_id`, when it answers a repeated
command. Remembering ids in memory (`subscribe(dedupe=N)`) forgets them at a restart; the inbox
records them in the consumer's own database, in the same transaction as the effect:

    inbox = Inbox(Base.metadata)                          # the table, in your own migrations
    async for received in client.subscribe(["coupon.redeemed"], queue="billing.coupons"):
        async with sessions.begin() as session, inbox.once(session, received) as fresh:
            if fresh:
                await bill(session, received.event)       # your effect, your transaction
        # the loop asks for the next event only now: the event is acknowledged after the commit

The effect and the record commit together or not at all: a crash before the commit leaves
neither (the event comes again and is fresh), a crash after it leaves both (the event comes
again and is not). Ids are kept until `prune` deletes them; keep them longer than any event can
take to come again (the broker's queue, plus a consumer's longest outage).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.received import ReceivedEvent
from contracts.validation import MAX_MESSAGE_ID_LENGTH

DEFAULT_TABLE = "coupon_inbox"
MAX_CONSUMER_LENGTH = 128


class Inbox:
    """The inbox table on the caller's `MetaData`, and `once` / `prune` on it. One table serves
    several consumers in one service: each names itself (`consumer=`), and an event counts as
    seen per consumer."""

    def __init__(
        self, metadata: MetaData, *, name: str = DEFAULT_TABLE, schema: str | None = None
    ) -> None:
        self.table = Table(
            name,
            metadata,
            Column("consumer", String(MAX_CONSUMER_LENGTH), primary_key=True),
            Column("message_id", String(MAX_MESSAGE_ID_LENGTH), primary_key=True),
            Column(
                "received_at", DateTime(timezone=True), nullable=False, server_default=func.now()
            ),
            schema=schema,
        )
        Index(f"ix_{name}_received_at", self.table.c.received_at)

    @contextlib.asynccontextmanager
    async def once(
        self, session: AsyncSession, received: ReceivedEvent, *, consumer: str = "default"
    ) -> AsyncIterator[bool]:
        """Record `received`'s `message_id` in `session`'s transaction and tell whether it is
        fresh (not recorded before). Both the record and whatever the block does run in a
        savepoint: if the block raises, neither stays, even when the caller catches the error
        and commits the rest of its transaction. A concurrent transaction recording the same
        id makes this one wait for it, then see the id as recorded (or fresh, if it rolled back).
        """
        message_id = received.message_id
        if not message_id:
            raise ValueError(
                f"{received.routing_key} event without message_id: it cannot be recognised when "
                "it comes again (the worker sets one on every event)"
            )
        if len(message_id.encode()) > MAX_MESSAGE_ID_LENGTH:
            raise ValueError(f"message_id longer than {MAX_MESSAGE_ID_LENGTH} bytes")
        if not consumer or len(consumer) > MAX_CONSUMER_LENGTH:
            raise ValueError(f"consumer: 1 to {MAX_CONSUMER_LENGTH} characters")
        async with session.begin_nested():
            recorded = await session.execute(
                insert(self.table)
                .values(consumer=consumer, message_id=message_id)
                .on_conflict_do_nothing()
                .returning(self.table.c.message_id)
            )
            yield recorded.first() is not None

    async def seen(
        self, session: AsyncSession, message_id: str, *, consumer: str = "default"
    ) -> bool:
        """Whether `message_id` is recorded for `consumer` (committed, or in this transaction)."""
        c = self.table.c
        found = await session.execute(
            select(c.message_id).where(c.consumer == consumer, c.message_id == message_id)
        )
        return found.first() is not None

    async def prune(
        self, session: AsyncSession, *, older_than: timedelta, limit: int = 10_000
    ) -> int:
        """Delete up to `limit` ids recorded longer than `older_than` ago (by the database's
        clock); returns how many. An event that comes again after its id is gone is fresh."""
        c = self.table.c
        oldest = (
            select(c.consumer, c.message_id)
            .where(c.received_at < func.now() - older_than)
            .limit(limit)
        )
        result = await session.execute(
            delete(self.table).where(func.row(c.consumer, c.message_id).in_(oldest))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
