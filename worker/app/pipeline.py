"""dedupe → lock and load → handle in memory → write → record → commit. No broker code here.

`process(batch)` takes decoded commands and returns one outcome per command, in order. The
whole batch is one unit of work: its effects and its outcomes commit together, or not at all.
A batch costs the same few statements whatever its size: look up stored outcomes, lock and load
the coupons it names, apply the commands to them in memory in arrival order (the handlers),
insert the new coupons, take the redemptions, record the outcomes, commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from contracts.commands import Command, GetCoupon
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
    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        handle: handlers.HandleCommand = handlers.handle,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._unit_of_work = unit_of_work
        self._handle = handle
        self._clock = clock

    async def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        """Apply every command not applied before, answer the others from their stored outcome.

        Raises a `TransientFailure` when the batch must simply be tried again: the database is
        unreachable (`DependencyUnavailable`), or a concurrent transaction committed one of
        these commands, or created one of these codes, first (`TransactionConflict`).
        """
        # Reads are naturally idempotent: `coupon.get` is answered fresh and not recorded.
        writes = list(dict.fromkeys(e.message_id for e in batch if not _is_read(e.command)))
        async with self._unit_of_work() as uow:
            results = await uow.processed.outcomes(writes)
            # What the batch must apply: every read (answered fresh, as if alone), and each
            # write whose message_id has no stored outcome (its duplicates share its outcome).
            todo = [e for e in batch if _is_read(e.command) or e.message_id not in results]
            touched = {envelope.command.code for envelope in todo}
            if any(not _is_read(envelope.command) for envelope in todo):
                loaded = await uow.coupons.lock_many(touched)  # one global lock order
            else:
                loaded = await uow.coupons.get_many(touched)
            coupons = WorkingSet(loaded)
            outcomes: list[Outcome] = []
            fresh: list[Outcome] = []
            # In arrival order: the outcomes are exactly those of applying them one by one.
            for envelope in batch:
                if not _is_read(envelope.command) and envelope.message_id in results:
                    outcomes.append(results[envelope.message_id])  # applied before
                    continue
                event = self._handle(envelope.command, coupons, envelope.message_id)
                outcome = self._outcome(envelope, event)
                outcomes.append(outcome)
                if outcome.broadcast:
                    results[envelope.message_id] = outcome
                    fresh.append(outcome)
            await uow.coupons.create_many(coupons.created)
            await uow.coupons.redeem_many(coupons.taken)
            if not await uow.processed.record(fresh):
                raise TransactionConflict(
                    "a concurrent delivery of the same command committed first"
                )
            await uow.commit()
        return outcomes

    def _outcome(self, envelope: Envelope, event: Event) -> Outcome:
        return Outcome(
            command_message_id=envelope.message_id,
            command=envelope.command.routing_key,
            routing_key=event.routing_key,
            body=event.model_dump_json().encode(),
            occurred_at=self._clock(),
            broadcast=not _is_read(envelope.command),
        )


def _is_read(command: Command) -> bool:
    return isinstance(command, GetCoupon)
