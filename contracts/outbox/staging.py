"""The outbox table, and staging a command in the caller's own transaction (the `outbox` extra).

A publisher that commits its own change (an order) and then publishes a command can crash in
between, or publish and then fail to commit. Staging writes the command into a table of the
caller's own database, in the same transaction as the change: both commit or neither does. The
relay (`contracts.outbox.relay`) publishes staged rows afterwards, with the staged `message_id`,
so a publish repeated after a crash is a repeat the worker answers with the stored outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import names
from contracts.commands import Command
from contracts.messages import CommandMessage
from contracts.validation import MAX_MESSAGE_ID_LENGTH, decode_command

DEFAULT_TABLE = "coupon_outbox"


class DuplicateMessageId(ValueError):
    """A command with this `message_id` is staged already (and not pruned yet)."""

    def __init__(self, message_id: str) -> None:
        super().__init__(
            f"a command with message_id {message_id[:80]!r} is staged already; "
            "one message_id stands for one command"
        )
        self.message_id = message_id


def checked(message: CommandMessage) -> Command:
    """The command in `message` if the worker would accept it as sent, else `InvalidCommand`
    (the same rules, `contracts.validation`): staging refuses what the worker would only
    dead-letter, and the relay parks a row that fails them (written by hand, or by another
    version)."""
    return decode_command(
        message.routing_key,
        message.body,
        message_id=message.message_id,
        content_type=message.content_type,
        type_=message.type,
        reply_to=message.reply_to,
    )


class Outbox:
    """The outbox table on the caller's `MetaData` (so their migrations create it), and the
    calls on it. `table` is a plain SQLAlchemy `Table`; an alembic autogenerate picks it up."""

    def __init__(
        self, metadata: MetaData, *, name: str = DEFAULT_TABLE, schema: str | None = None
    ) -> None:
        self.table = Table(
            name,
            metadata,
            # The staging order: the relay publishes in it.
            Column("id", BigInteger, Identity(), primary_key=True),
            Column("message_id", String(MAX_MESSAGE_ID_LENGTH), nullable=False, unique=True),
            Column("routing_key", String(64), nullable=False),
            Column("body", LargeBinary, nullable=False),
            Column("correlation_id", String(MAX_MESSAGE_ID_LENGTH)),
            Column("staged_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
            Column("sent_at", DateTime(timezone=True)),
            Column("parked_at", DateTime(timezone=True)),
            Column("park_reason", Text),
            schema=schema,
        )
        c = self.table.c
        # What the relay looks for: a small partial index, whatever the number of sent rows.
        Index(
            f"ix_{name}_unsent",
            c.id,
            postgresql_where=c.sent_at.is_(None) & c.parked_at.is_(None),
        )
        Index(f"ix_{name}_sent_at", c.sent_at, postgresql_where=c.sent_at.is_not(None))

    async def stage(
        self,
        session: AsyncSession,
        command: Command,
        *,
        message_id: str,
        correlation_id: str | None = None,
    ) -> None:
        """Record `command` for publishing, in `session`'s current transaction: it is published
        once that transaction commits, and never if it rolls back. A command the worker would
        refuse raises `InvalidCommand`, one whose `message_id` is staged already raises
        `DuplicateMessageId`; either way nothing is staged."""
        if not isinstance(command, Command):
            raise TypeError(f"stage a contracts Command, not {type(command).__name__}")
        body = command.model_dump_json().encode()
        message = message_of(command.routing_key, body, message_id, correlation_id)
        checked(message)
        for name, value in (("message_id", message_id), ("correlation_id", correlation_id)):
            if value is not None and len(value.encode()) > MAX_MESSAGE_ID_LENGTH:
                # An AMQP short string: the limit is in bytes, which the contract's is not.
                raise ValueError(f"{name} is longer than {MAX_MESSAGE_ID_LENGTH} bytes in UTF-8")
        statement = (
            insert(self.table)
            .values(
                message_id=message.message_id,
                routing_key=message.routing_key,
                body=message.body,
                correlation_id=message.correlation_id,
            )
            .on_conflict_do_nothing(index_elements=[self.table.c.message_id])
            .returning(self.table.c.id)
        )
        if (await session.execute(statement)).first() is None:
            raise DuplicateMessageId(message.message_id)

    async def parked(self, session: AsyncSession) -> Sequence[tuple[str, str]]:
        """`(message_id, reason)` of every row the relay could not publish, oldest first."""
        c = self.table.c
        rows = await session.execute(
            select(c.message_id, c.park_reason).where(c.parked_at.is_not(None)).order_by(c.id)
        )
        return [(row.message_id, row.park_reason or "") for row in rows]

    async def release(self, session: AsyncSession, message_ids: Sequence[str]) -> int:
        """Hand parked rows back to the relay (once what refused them is mended)."""
        c = self.table.c
        result = await session.execute(
            update(self.table)
            .where(c.message_id.in_(message_ids), c.parked_at.is_not(None))
            .values(parked_at=None, park_reason=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def prune(
        self, session: AsyncSession, *, older_than: timedelta, limit: int = 10_000
    ) -> int:
        """Delete up to `limit` rows sent longer than `older_than` ago (by the database's
        clock); returns how many. A command staged again after its row is gone is published
        again, and the worker answers it with the outcome it stored."""
        c = self.table.c
        oldest = select(c.id).where(c.sent_at < func.now() - older_than).order_by(c.id).limit(limit)
        result = await session.execute(delete(self.table).where(c.id.in_(oldest)))
        return int(result.rowcount)  # type: ignore[attr-defined]


def message_of(
    routing_key: str, body: bytes, message_id: str, correlation_id: str | None
) -> CommandMessage:
    """A staged row as the message the relay publishes (persistent, JSON)."""
    return CommandMessage(
        routing_key=routing_key,
        body=bytes(body),
        message_id=message_id,
        correlation_id=correlation_id,
        content_type=names.JSON_CONTENT_TYPE,
    )
