"""Repositories over one AsyncSession. They never commit: the unit of work does."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from worker.app.outcomes import Outcome
from worker.db.tables import Base, Coupon, ProcessedCommand
from worker.domain import model
from worker.domain.errors import AlreadyExists, DoesNotExist, Exhausted

ModelT = TypeVar("ModelT", bound=Base)


class BaseRepository(Generic[ModelT]):
    """Add and fetch-by-id for any mapped class."""

    table: ClassVar[type[Any]]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, entity: ModelT) -> ModelT:
        self.session.add(entity)
        await self.session.flush()
        return entity

    async def get_by_id(self, entity_id: uuid.UUID) -> ModelT:
        entity: ModelT | None = await self.session.get(self.table, entity_id)
        if entity is None:
            raise DoesNotExist(str(entity_id))
        return entity


_COUPON_COLUMNS = (Coupon.id, Coupon.code, Coupon.init_count, Coupon.remaining_count)


class CouponsRepository(BaseRepository[Coupon]):
    table = Coupon

    async def create(self, code: str, init_count: int) -> model.Coupon:
        # ON CONFLICT keeps a duplicate code from aborting the batch's transaction.
        statement = (
            insert(Coupon)
            .values(id=uuid.uuid4(), code=code, init_count=init_count, remaining_count=init_count)
            .on_conflict_do_nothing(index_elements=[Coupon.code])
            .returning(*_COUPON_COLUMNS)
        )
        row = (await self.session.execute(statement)).one_or_none()
        if row is None:
            raise AlreadyExists(code)
        return model.Coupon(*row)

    async def get_by_code(self, code: str) -> model.Coupon:
        row = (
            await self.session.execute(select(*_COUPON_COLUMNS).where(Coupon.code == code))
        ).one_or_none()
        if row is None:
            raise DoesNotExist(code)
        return model.Coupon(*row)

    async def redeem(self, code: str) -> model.Coupon:
        # One statement, guarded in SQL: concurrent redeems queue on the row lock and can
        # never take the count below zero (the CHECK constraint backs this up).
        statement = (
            update(Coupon)
            .where(Coupon.code == code, Coupon.remaining_count > 0)
            .values(remaining_count=Coupon.remaining_count - 1)
            .returning(*_COUPON_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        row = (await self.session.execute(statement)).one_or_none()
        if row is None:
            await self.get_by_code(code)  # raises DoesNotExist when there is no such coupon
            raise Exhausted(code)
        return model.Coupon(*row)


class ProcessedCommandsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def outcomes(self, message_ids: Sequence[str]) -> dict[str, Outcome]:
        if not message_ids:
            return {}
        rows = await self.session.scalars(
            select(ProcessedCommand).where(ProcessedCommand.message_id.in_(message_ids))
        )
        return {
            row.message_id: Outcome(
                command_message_id=row.message_id,
                command=row.command,
                routing_key=row.outcome_type,
                body=row.outcome_body.encode(),
                occurred_at=row.processed_at,
            )
            for row in rows
        }

    async def record(self, outcomes: Sequence[Outcome]) -> bool:
        if not outcomes:
            return True
        statement = (
            insert(ProcessedCommand)
            .values(
                [
                    {
                        "message_id": outcome.command_message_id,
                        "command": outcome.command,
                        "outcome_type": outcome.routing_key,
                        "outcome_body": outcome.body.decode(),
                        "processed_at": outcome.occurred_at,
                    }
                    for outcome in outcomes
                ]
            )
            .on_conflict_do_nothing(index_elements=[ProcessedCommand.message_id])
            .returning(ProcessedCommand.message_id)
        )
        inserted = (await self.session.scalars(statement)).all()
        return len(inserted) == len(outcomes)

    async def prune(self, processed_before: datetime, limit: int) -> int:
        """Delete up to `limit` of the oldest rows processed before `processed_before`; returns
        how many went. A command redelivered after its row is gone is applied again."""
        oldest = (
            select(ProcessedCommand.message_id)
            .where(ProcessedCommand.processed_at < processed_before)
            .order_by(ProcessedCommand.processed_at)
            .limit(limit)
            .scalar_subquery()
        )
        deleted = await self.session.scalars(
            delete(ProcessedCommand)
            .where(ProcessedCommand.message_id.in_(oldest))
            .returning(ProcessedCommand.message_id)
        )
        return len(deleted.all())
