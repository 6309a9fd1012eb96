"""The abstractions the handlers need; `worker.db` implements them (the pipeline's own, the
stored outcomes, are in `worker.app.ports`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self

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


class UnitOfWork(Protocol):
    @property
    def coupons(self) -> CouponRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed."""

    async def commit(self) -> None: ...
