"""The units of work: one pooled `AsyncConnection` each, its two repositories, commit only when
told. `SqlAlchemyUnitOfWork` runs a batch in one transaction that locks what it loads;
`OptimisticUnitOfWork`, for a batch alone, reads without a lock and writes in one guarded
statement, with no transaction block around it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import asyncpg.exceptions as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.app.failures import TransactionConflict, causes
from worker.app.outcomes import Outcome
from worker.db.repositories import (
    GUARDED_WRITE,
    LOCK_AND_LOOK_UP,
    LOOK_UP,
    WRITE_ALL,
    CouponsRepository,
    ProcessedCommandsRepository,
    conflict,
    coupon_rows,
    guard_rows,
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
        return await self._load(LOCK_AND_LOOK_UP, message_ids, codes)

    async def _load(
        self, statement: Any, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        outcomes: dict[str, Outcome] = {}
        coupons: dict[str, Coupon] = {}
        if message_ids or codes:
            parameters = {"message_ids": list(message_ids), "codes": list(codes)}
            for row in await self._open().execute(statement, parameters):
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


class OptimisticUnitOfWork(SqlAlchemyUnitOfWork):
    """A batch in two round trips instead of four: read without a lock, then write everything
    and commit in one guarded statement (`GUARDED_WRITE`), outside a transaction block (no
    BEGIN, no COMMIT: asyncpg cannot send BEGIN together with the first statement).

    `load_batch` reads the stored outcomes and the coupons as they stand (`LOOK_UP`) and notes
    what it read; `write_batch` only stages the writes; `commit()` sends them, all or nothing,
    compared under lock with what was read. A batch that read a state which no longer holds
    (a coupon taken from or created, a command recorded, by a concurrent transaction) writes
    nothing and raises `TransactionConflict` at `commit()`, where the locking unit of work
    would have queued behind the other's lock: so the pipeline uses this one only for a batch
    alone (where a conflict is rare) and takes the locks after a conflict.

    `engine` must run its connections outside a transaction block
    (`engine.execution_options(isolation_level="AUTOCOMMIT")`: `optimistic_units_of_work`
    makes them so), and the repositories only read: a write through them would commit on its
    own, apart from the batch."""

    def __init__(self, engine: AsyncEngine) -> None:
        if engine.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            raise ValueError("an optimistic unit of work needs an AUTOCOMMIT engine")
        super().__init__(engine)
        self._named: Collection[str] = ()
        self._read: dict[str, Coupon] = {}
        self._staged: tuple[dict[str, Any], tuple[int, int, int]] | None = None

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        connection = self._open()
        self.coupons = ReadOnlyCoupons(connection)
        self.processed = ReadOnlyProcessedCommands(connection)
        self._named, self._read, self._staged = (), {}, None
        return self

    async def load_batch(
        self, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        """One statement, `LOOK_UP`: stored outcomes, then the coupons, read without a lock."""
        outcomes, coupons = await self._load(LOOK_UP, message_ids, codes)
        self._named, self._read = list(codes), dict(coupons)
        return outcomes, coupons

    async def write_batch(
        self, created: Sequence[Coupon], taken: Mapping[str, int], outcomes: Sequence[Outcome]
    ) -> None:
        """Staged for `commit()`; nothing is sent."""
        if not (created or taken or outcomes):
            return
        parameters = (
            coupon_rows(created)
            | taken_rows(taken)
            | outcome_rows(outcomes)
            | guard_rows(self._named, self._read)
        )
        self._staged = parameters, (len(created), len(taken), len(outcomes))

    async def commit(self) -> None:
        """One statement, `GUARDED_WRITE`, its own transaction: the staged writes, or nothing
        and `TransactionConflict`."""
        connection = self._open()
        staged, self._staged = self._staged, None
        if staged is None:
            return
        parameters, expected = staged
        try:
            written = (await connection.execute(GUARDED_WRITE, parameters)).one()
        except Exception as error:
            if any(isinstance(link, pg.UniqueViolationError) for link in causes(error)):
                raise TransactionConflict(WRITTEN_FIRST) from error
            raise translated(error) from error
        if not written.unchanged:
            raise TransactionConflict(READ_CHANGED)
        if (written.created, written.redeemed, written.recorded) != expected:
            # Cannot happen with every write guarded (see `GUARDED_WRITE`): said loudly if it did.
            raise RuntimeError(f"the guarded write wrote {tuple(written)[1:]}, not {expected}")


def optimistic_units_of_work(engine: AsyncEngine) -> Callable[[], OptimisticUnitOfWork]:
    """Optimistic units of work on `engine`'s pool, its connections outside a transaction
    block."""
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return lambda: OptimisticUnitOfWork(autocommit)


WRITTEN_FIRST = (
    "a concurrent transaction created one of these codes or recorded one of these commands"
)
READ_CHANGED = "a coupon the batch read changed, or was created, before its write"


class ReadOnlyCoupons(CouponsRepository):
    """`CouponsRepository` that refuses to write (outside a transaction block, a write would
    commit on its own): the optimistic unit of work writes only through `commit()`."""

    async def lock_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        raise RuntimeError("an optimistic unit of work takes no locks")

    async def create_many(self, coupons: Sequence[Coupon]) -> None:
        raise RuntimeError("an optimistic unit of work writes through write_batch")

    async def redeem_many(self, taken: Mapping[str, int]) -> None:
        raise RuntimeError("an optimistic unit of work writes through write_batch")


class ReadOnlyProcessedCommands(ProcessedCommandsRepository):
    """`ProcessedCommandsRepository` that refuses to write, as `ReadOnlyCoupons`."""

    async def record(self, outcomes: Sequence[Outcome]) -> bool:
        raise RuntimeError("an optimistic unit of work writes through write_batch")

    async def prune(self, processed_before: datetime, limit: int) -> int:
        raise RuntimeError("an optimistic unit of work writes through write_batch")
