"""The abstractions the handlers need; `worker.db` implements them (the pipeline's own, the
stored outcomes, are in `worker.app.ports`)."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from worker.domain.model import Coupon


class CouponRepository(Protocol):
    async def create(self, code: str, init_count: int) -> Coupon:
        """Insert a coupon with all its redemptions left; `AlreadyExists` on a taken code."""

    async def get_by_code(self, code: str) -> Coupon:
        """The coupon, or `DoesNotExist`."""

    async def redeem(self, code: str) -> Coupon:
        """Atomically take one redemption; `DoesNotExist` or `Exhausted` if it cannot."""


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
