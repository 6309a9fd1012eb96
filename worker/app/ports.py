"""What the pipeline needs beyond the domain's ports: stored outcomes, and a unit of work that
holds them next to the coupons. `worker.db` implements these; `tests/fakes.py` fakes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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
