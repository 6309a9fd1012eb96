"""The unit of work: one pooled `AsyncConnection` in one transaction, its two repositories,
commit only when told."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.db.repositories import CouponsRepository, ProcessedCommandsRepository
from worker.db.transience import translated


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

    async def commit(self) -> None:
        if self._connection is None:
            raise RuntimeError("commit() outside `async with uow`")
        try:
            await self._connection.commit()
        except Exception as error:
            raise translated(error) from error
