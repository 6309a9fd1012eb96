"""The abstractions the handlers and the pipeline need; `worker.db` implements them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self

from worker.domain.model import Coupon, Outcome


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

        `TransientFailure` (a conflict) if another transaction created one of these codes
        first: the batch decided on a state that no longer holds and must be applied again.
        """

    async def redeem_many(self, taken: Mapping[str, int]) -> None:
        """Take `taken[code]` redemptions from each coupon, guarded so that no count goes
        below zero. `TransientFailure` (a conflict) if a coupon is missing or has fewer left:
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
    @property
    def coupons(self) -> CouponRepository: ...

    @property
    def processed(self) -> ProcessedCommands: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed."""

    async def commit(self) -> None: ...
