"""The ports: what the pipeline and its handlers need of storage. `worker.db` implements them;
`tests/fakes.py` fakes them (and `tests/integration/test_storage_contract.py` holds both to the
same contract).

The handlers themselves need none of this: they work on the batch's `WorkingSet`, in memory;
the pipeline loads it through these ports and writes back what changed."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self

from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.domain.model import Coupon


class CouponRepository(Protocol):
    """Coupons, a batch at a time: each method is one statement whatever the number of codes."""

    async def lock_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        """The existing coupons among `codes`, by code, locked against other writers until the
        unit of work ends. Rows are locked in code order, one global order for every batch, so
        concurrent batches that share coupons queue behind each other and never deadlock."""

    async def get_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        """The existing coupons among `codes`, by code, read without locking."""

    async def create_many(self, coupons: Sequence[Coupon]) -> None:
        """Insert new coupons (in code order).

        `TransactionConflict` if another transaction created one of these codes
        first: the batch decided on a state that no longer holds and must be applied again.
        """

    async def redeem_many(self, taken: Mapping[str, int]) -> None:
        """Take `taken[code]` redemptions from each coupon, guarded so that no count goes
        below zero. `TransactionConflict` if a coupon is missing or has fewer left:
        never an oversell, never a partial change."""


class ProcessedCommands(Protocol):
    async def outcomes(self, message_ids: Sequence[str]) -> dict[str, Outcome]:
        """Stored outcomes of the commands among `message_ids` that were already applied."""

    async def record(self, outcomes: Sequence[Outcome]) -> bool:
        """Store outcomes in the current transaction.

        False if another transaction recorded one of these commands first: the caller must
        roll back, because that command's effect is already applied.
        """


class UnitOfWork(Protocol):
    """One transaction over the coupons and the record of processed commands: what it did not
    commit when it ends is rolled back."""

    @property
    def coupons(self) -> CouponRepository: ...

    @property
    def processed(self) -> ProcessedCommands: ...

    async def load_batch(
        self, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        """`processed.outcomes(message_ids)` and `coupons.lock_many(codes)` together (on
        PostgreSQL one statement, one round trip): what a batch of writes starts with."""

    async def write_batch(
        self, created: Sequence[Coupon], taken: Mapping[str, int], outcomes: Sequence[Outcome]
    ) -> None:
        """`coupons.create_many(created)`, `coupons.redeem_many(taken)` and
        `processed.record(outcomes)` together (on PostgreSQL one statement, one round trip):
        what a batch ends with. `TransactionConflict` where any of them conflicts (a record
        that would return False included): the caller rolls back and tries again. A unit of
        work may instead stage the writes and send them at `commit()`, which then raises the
        conflict (`worker.db.unit_of_work.OptimisticUnitOfWork`)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed."""

    async def commit(self) -> None: ...


async def load_stepwise(
    uow: UnitOfWork, message_ids: Sequence[str], codes: Collection[str]
) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
    """`UnitOfWork.load_batch` as the two repository calls it stands for, one after the other
    (for a storage with no faster way)."""
    return await uow.processed.outcomes(message_ids), await uow.coupons.lock_many(codes)


async def write_stepwise(
    uow: UnitOfWork,
    created: Sequence[Coupon],
    taken: Mapping[str, int],
    outcomes: Sequence[Outcome],
) -> None:
    """`UnitOfWork.write_batch` as the three repository calls it stands for."""
    await uow.coupons.create_many(created)
    await uow.coupons.redeem_many(taken)
    if not await uow.processed.record(outcomes):
        raise TransactionConflict(ALREADY_RECORDED)


ALREADY_RECORDED = "a concurrent delivery of the same command committed first"


class ForwardingUnitOfWork:
    """A unit of work that hands every call to another: the base of the decorators that add
    to one (metrics, fault injection), each overriding only what it adds."""

    def __init__(self, inner: UnitOfWork) -> None:
        self._inner = inner

    @property
    def coupons(self) -> CouponRepository:
        return self._inner.coupons

    @property
    def processed(self) -> ProcessedCommands:
        return self._inner.processed

    async def load_batch(
        self, message_ids: Sequence[str], codes: Collection[str]
    ) -> tuple[dict[str, Outcome], dict[str, Coupon]]:
        return await self._inner.load_batch(message_ids, codes)

    async def write_batch(
        self, created: Sequence[Coupon], taken: Mapping[str, int], outcomes: Sequence[Outcome]
    ) -> None:
        await self._inner.write_batch(created, taken, outcomes)

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def commit(self) -> None:
        await self._inner.commit()
