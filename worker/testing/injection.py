"""Fault injection at the edge: decorators that make a `FaultPlan` fire at its points.

The points are reached through decorators (`FaultInjection`) around the handler, the unit of
work and the publisher, which only the composition root (`worker.entrypoints.run`) applies, and
only when a plan is set: no production class knows of faults.
- `handle`: before the command's handler runs, inside the transaction;
- `before_commit` / `after_commit`: around the commit of a transaction that handled the code
  (a command answered from its stored outcome is not handled again, and does not reach them);
- `after_publish`: every outcome of the batch confirmed, no command acknowledged yet. A `raise`
  there reads to the worker as a publish that failed: the batch is returned to the queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Self

from aio_pika.abc import AbstractIncomingMessage

from contracts.commands import Command
from contracts.events import Event
from worker.app.outcomes import Outcome
from worker.app.ports import CouponRepository, ForwardingUnitOfWork, UnitOfWork
from worker.domain.handlers import HandleCommand
from worker.domain.model import Coupon
from worker.domain.working_set import WorkingSet
from worker.messaging.publisher import OutcomePublisher
from worker.testing.faults import FaultPlan, FaultPoint


class FaultInjection:
    """Decorators that make `plan` fire at its points; applied by the composition root."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan

    def handle(self, handle: HandleCommand) -> HandleCommand:
        def faulty(command: Command, coupons: WorkingSet, message_id: str) -> Event:
            self.plan.hit(FaultPoint.HANDLE, [command.code])
            return handle(command, coupons, message_id)

        return faulty

    def unit_of_work(self, factory: Callable[[], UnitOfWork]) -> Callable[[], UnitOfWork]:
        return lambda: FaultyUnitOfWork(factory(), self.plan)

    def publisher(self, publisher: OutcomePublisher) -> OutcomePublisher:
        return FaultyPublisher(publisher, self.plan)


class FaultyUnitOfWork(ForwardingUnitOfWork):
    """A unit of work that reaches `before_commit` and `after_commit` for the codes handled in
    it: those the pipeline loads to handle (a command answered from its stored outcome is not
    loaded again)."""

    def __init__(self, inner: UnitOfWork, plan: FaultPlan) -> None:
        super().__init__(inner)
        self._plan = plan
        self._committed = False
        self.handled: list[str] = []

    @property
    def coupons(self) -> CouponRepository:
        return _RecordingCoupons(self._inner.coupons, self.handled)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self._committed = False
        self.handled.clear()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        if exc is None and self._committed:
            self._plan.hit(FaultPoint.AFTER_COMMIT, self.handled)

    async def commit(self) -> None:
        self._plan.hit(FaultPoint.BEFORE_COMMIT, self.handled)
        await super().commit()
        self._committed = True


class _RecordingCoupons:
    """The coupon repository, noting the codes the pipeline loads to handle."""

    def __init__(self, inner: CouponRepository, handled: list[str]) -> None:
        self._inner = inner
        self._handled = handled

    async def lock_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        self._handled.extend(sorted(codes))
        return await self._inner.lock_many(codes)

    async def get_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        self._handled.extend(sorted(codes))
        return await self._inner.get_many(codes)

    async def create_many(self, coupons: Sequence[Coupon]) -> None:
        await self._inner.create_many(coupons)

    async def redeem_many(self, taken: Mapping[str, int]) -> None:
        await self._inner.redeem_many(taken)


class FaultyPublisher:
    """A publisher that reaches `after_publish` once a batch's outcomes are all confirmed."""

    def __init__(self, inner: OutcomePublisher, plan: FaultPlan) -> None:
        self._inner = inner
        self._plan = plan

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None:
        await self._inner.publish_outcomes(answers)
        self._plan.hit(FaultPoint.AFTER_PUBLISH, [_code(command) for command, _ in answers])

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        await self._inner.dead_letter(command, error, detail, reply_error)


def _code(command: AbstractIncomingMessage) -> str:
    """The coupon code of a command the worker decoded already (so its body is valid)."""
    code = json.loads(command.body).get("code")
    return code if isinstance(code, str) else ""
