"""What the pipeline needs beyond the domain's ports: stored outcomes, and a unit of work that
holds them next to the coupons. `worker.db` implements these; `tests/fakes.py` fakes them."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from worker.app.outcomes import Outcome
from worker.domain import ports


class ProcessedCommands(Protocol):
    async def outcomes(self, message_ids: Sequence[str]) -> dict[str, Outcome]:
        """Stored outcomes of the commands among `message_ids` that were already applied."""

    async def record(self, outcomes: Sequence[Outcome]) -> bool:
        """Store outcomes in the current transaction.

        False if another transaction recorded one of these commands first: the caller must
        roll back, because that command's effect is already applied.
        """


class UnitOfWork(ports.UnitOfWork, Protocol):
    """The domain's unit of work, plus the record of processed commands."""

    @property
    def processed(self) -> ProcessedCommands: ...


class ForwardingUnitOfWork:
    """A unit of work that hands every call to another: the base of the decorators that add
    to one (metrics, fault injection), each overriding only what it adds."""

    def __init__(self, inner: UnitOfWork) -> None:
        self._inner = inner

    @property
    def coupons(self) -> ports.CouponRepository:
        return self._inner.coupons

    @property
    def processed(self) -> ProcessedCommands:
        return self._inner.processed

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
