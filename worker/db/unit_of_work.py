"""The unit of work: one AsyncSession, its repositories, commit only when told."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from worker.db.repositories import CouponsRepository, ProcessedCommandsRepository
from worker.db.transience import translated


class SqlAlchemyUnitOfWork:
    """Rolls back on any exception or on exit without `commit()`; transient database
    faults leave it as a `TransientFailure` (`DependencyUnavailable` or
    `TransactionConflict`), so callers need not know SQLAlchemy."""

    coupons: CouponsRepository
    processed: ProcessedCommandsRepository

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        self._session: AsyncSession | None = None

    async def __aenter__(self) -> Self:
        self._session = self._session_factory()
        self.coupons = CouponsRepository(self._session)
        self.processed = ProcessedCommandsRepository(self._session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            await session.rollback()  # a no-op after commit
            await session.close()
        except Exception as cleanup_error:  # the connection may be gone; it is discarded
            if exc is None:
                raise translated(cleanup_error) from cleanup_error
        if isinstance(exc, Exception):
            failure = translated(exc)
            if failure is not exc:
                raise failure from exc

    async def commit(self) -> None:
        if self._session is None:
            raise RuntimeError("commit() outside `async with uow`")
        try:
            await self._session.commit()
        except Exception as error:
            raise translated(error) from error
