"""decode/validate → dedupe → handle → record → commit. No broker code here.

`process(batch)` takes decoded commands and returns one outcome per command, in order. The
whole batch is one unit of work: its effects and its outcomes commit together, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from contracts.commands import Command, GetCoupon
from contracts.events import Event
from worker.domain.errors import TransientFailure
from worker.domain.handlers import handle
from worker.domain.model import Outcome
from worker.domain.ports import UnitOfWork
from worker.faults import NO_FAULTS, FaultPlan, FaultPoint


@dataclass(frozen=True, slots=True)
class Envelope:
    """A validated command and its idempotency key."""

    message_id: str
    command: Command


class BatchProcessor(Protocol):
    """What the consumer needs of the pipeline; decorators (metrics, tracing) implement it too."""

    async def process(self, batch: Sequence[Envelope]) -> list[Outcome]: ...


class Pipeline:
    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        faults: FaultPlan = NO_FAULTS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._unit_of_work = unit_of_work
        self._faults = faults
        self._clock = clock

    async def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        """Apply every command not applied before, answer the others from their stored outcome.

        Raises `TransientFailure` when the batch must simply be tried again (the database is
        unreachable, or a concurrent delivery of one of these commands committed first).
        """
        codes = [envelope.command.code for envelope in batch]
        # Reads are naturally idempotent: `coupon.get` is answered fresh and not recorded.
        writes = list(dict.fromkeys(e.message_id for e in batch if not _is_read(e.command)))
        async with self._unit_of_work() as uow:
            results = await uow.processed.outcomes(writes)
            fresh: list[Outcome] = []
            # Rows are locked in code order (a stable sort keeps each code's commands in their
            # order), so concurrent batches that share coupons queue instead of deadlocking.
            for envelope in sorted(batch, key=lambda e: e.command.code):
                if envelope.message_id in results:
                    continue  # applied before, or earlier in this very batch
                self._faults.hit(FaultPoint.HANDLE, [envelope.command.code])
                outcome = self._outcome(envelope, await handle(envelope.command, uow))
                results[envelope.message_id] = outcome
                if outcome.broadcast:
                    fresh.append(outcome)
            if not await uow.processed.record(fresh):
                raise TransientFailure(
                    "a concurrent delivery of the same command committed first", outage=False
                )
            self._faults.hit(FaultPoint.BEFORE_COMMIT, codes)
            await uow.commit()
        self._faults.hit(FaultPoint.AFTER_COMMIT, codes)
        return [results[envelope.message_id] for envelope in batch]

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
