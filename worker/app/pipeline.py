"""dedupe and lock-and-load → handle in memory → write and record → commit. No broker code.

`process(batch)` takes decoded commands and returns one outcome per command, in order. The
whole batch is one unit of work: its effects and its outcomes commit together, or not at all.
A batch costs the same two statements whatever its size: look up stored outcomes while locking
and loading the coupons it names, apply the commands to them in memory in arrival order (the
handlers), then insert the new coupons, take the redemptions and record the outcomes; commit.
A batch of one command may go through an optimistic unit of work instead (see `Pipeline`): the
same two statements, read without a lock and the second guarded, with no BEGIN or COMMIT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from contracts.commands import Command
from contracts.events import Event
from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.ports import UnitOfWork
from worker.domain import handlers
from worker.domain.working_set import WorkingSet


@dataclass(frozen=True, slots=True)
class Envelope:
    """A validated command and its idempotency key."""

    message_id: str
    command: Command


class CommandPipeline(Protocol):
    """What a batch needs of the pipeline (`Pipeline`, and the decorators around it)."""

    async def process(self, batch: Sequence[Envelope]) -> list[Outcome]: ...


class Pipeline:
    """`unit_of_work` makes the unit of work of every batch; `lone_unit_of_work`, if given,
    that of a batch of one command, tried first: an optimistic one (`OptimisticUnitOfWork` on
    PostgreSQL, two round trips instead of four: what a command pays at a low rate, where every
    batch holds one). If it conflicts (a concurrent transaction changed what it read), the
    command is applied again at once through `unit_of_work`, whose locks queue it instead
    (`on_lone_conflict` hears of it: the composition root counts it as a retry)."""

    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        handle: handlers.HandleCommand = handlers.handle,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lone_unit_of_work: Callable[[], UnitOfWork] | None = None,
        on_lone_conflict: Callable[[], None] = lambda: None,
    ) -> None:
        self._unit_of_work = unit_of_work
        self._lone_unit_of_work = lone_unit_of_work
        self._handle = handle
        self._clock = clock
        self._on_lone_conflict = on_lone_conflict

    async def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        """Apply every command not applied before, answer the others from their stored outcome.

        Raises a `TransientFailure` when the batch must simply be tried again: the database is
        unreachable (`DependencyUnavailable`), or a concurrent transaction committed one of
        these commands, or created one of these codes, first (`TransactionConflict`).
        """
        if len(batch) == 1 and self._lone_unit_of_work is not None:
            try:
                return await self._apply(batch, self._lone_unit_of_work)
            except TransactionConflict:  # nothing was written: apply it again, with locks
                self._on_lone_conflict()
        return await self._apply(batch, self._unit_of_work)

    async def _apply(
        self, batch: Sequence[Envelope], unit_of_work: Callable[[], UnitOfWork]
    ) -> list[Outcome]:
        # Reads are naturally idempotent: `coupon.get` is answered fresh and not recorded.
        writes = list(dict.fromkeys(e.message_id for e in batch if not e.command.is_read))
        touched = {envelope.command.code for envelope in batch}
        async with unit_of_work() as uow:
            if writes:  # stored outcomes, and the coupons locked in one global lock order
                results, loaded = await uow.load_batch(writes, touched)
            else:
                results, loaded = {}, await uow.coupons.get_many(touched)
            coupons = WorkingSet(loaded)
            outcomes: list[Outcome] = []
            fresh: list[Outcome] = []
            # In arrival order: the outcomes are exactly those of applying them one by one.
            for envelope in batch:
                if not envelope.command.is_read and envelope.message_id in results:
                    outcomes.append(results[envelope.message_id])  # applied before
                    continue
                event = self._handle(envelope.command, coupons, envelope.message_id)
                outcome = self._outcome(envelope, event)
                outcomes.append(outcome)
                if outcome.broadcast:
                    results[envelope.message_id] = outcome
                    fresh.append(outcome)
            await uow.write_batch(coupons.created, coupons.taken, fresh)
            await uow.commit()
        return outcomes

    def _outcome(self, envelope: Envelope, event: Event) -> Outcome:
        return Outcome(
            command_message_id=envelope.message_id,
            command=envelope.command.routing_key,
            routing_key=event.routing_key,
            body=event.model_dump_json().encode(),
            occurred_at=self._clock(),
            broadcast=not envelope.command.is_read,
        )
