"""The unit of work: one pooled `AsyncConnection` in one transaction, its two repositories,
commit only when told."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.db.repositories import (
    LOCK_AND_LOOK_UP,
    WRITE_ALL,
    CouponsRepository,
    ProcessedCommandsRepository,
    conflict,
    coupon_rows,
    outcome_rows,
    taken_rows,
    to_coupon,
    to_outcome,
)
from worker.db.transience import translated
from worker.domain.model import Coupon


class SqlAlchemyUnitOfWork:
    """Rolls back on any exception or on exit without `commit()`; transient database
    faults leave it as a `TransientFailure` (`DependencyUnavailable` or
    `TransactionConflict`), so callers need not know SQLAlchemy.

    The connection is checked out of the engine's pool on entry and returned on exit; the
    transaction begins with the first statement (asyncpg sends BEGIN then)."""

    coupons: CouponsRepository
    processed: ProcessedCommandsRepository

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> Self:
        try:
            connection = await self._engine.connect()
        except Exception as error:
            raise translated(error) from error
        self._connection = connection
        self.coupons = CouponsRepository(connection)
        self.processed = ProcessedCommandsRepository(connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.close()  # rolls back whatever was not committed
        except Exception as cleanup_error:  # the connection may be gone; it is discarded
            if exc is None:
                raise translated(cleanup_error) from cleanup_error
        if isinstance(exc, Exception):
            failure = translated(exc)
            if failure is not exc:
                raise failure from exc

    async def load_batch(
        self, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        """One statement, `LOCK_AND_LOOK_UP`: stored outcomes, then the coupons locked."""
        outcomes: dict[str, Outcome] = {}
        coupons: dict[str, Coupon] = {}
        if message_ids or codes:
            parameters = {"message_ids": list(message_ids), "codes": list(codes)}
            for row in await self._open().execute(LOCK_AND_LOOK_UP, parameters):
                if row.message_id is not None:
                    outcomes[row.message_id] = to_outcome(row)
                else:
                    coupons[row.code] = to_coupon(row)
        return outcomes, coupons

    async def write_batch(
        self, created: Sequence[Coupon], taken: Mapping[str, int], outcomes: Sequence[Outcome]
    ) -> None:
        """One statement, `WRITE_ALL`: the new coupons, the redemptions and the outcomes."""
        if not (created or taken or outcomes):
            return
        parameters = coupon_rows(created) | taken_rows(taken) | outcome_rows(outcomes)
        written = (await self._open().execute(WRITE_ALL, parameters)).one()
        if (failed := conflict(created, taken, outcomes, written)) is not None:
            raise TransactionConflict(failed)

    def _open(self) -> AsyncConnection:
        if self._connection is None:
            raise RuntimeError("used outside `async with uow`")
        return self._connection

    async def commit(self) -> None:
        if self._connection is None:
            raise RuntimeError("commit() outside `async with uow`")
        try:
            await self._connection.commit()
        except Exception as error:
            raise translated(error) from error
