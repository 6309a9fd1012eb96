"""The abstractions the handlers and the pipeline need; `worker.db` implements them."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from worker.domain.model import Coupon, Outcome


class CouponRepository(Protocol):
    async def create(self, code: str, init_count: int) -> Coupon:
        """Insert a coupon with all its redemptions left; `AlreadyExists` on a taken code."""

    async def get_by_code(self, code: str) -> Coupon:
        """The coupon, or `DoesNotExist`."""

    async def redeem(self, code: str) -> Coupon:
        """Atomically take one redemption; `DoesNotExist` or `Exhausted` if it cannot."""


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
