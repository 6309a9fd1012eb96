"""The retry policy: how often, how soon, and in what shape a batch is tried again.

- A transient failure is not a failure of the command: the batch is held (nothing is nacked,
  so an outage does not burn the queue's delivery limit) and tried again, for as long as it
  takes — at once after a `TransactionConflict` (with a little jitter), with a growing back-off
  while a dependency is unavailable (`DependencyUnavailable`, logged once per outage).
- Any other failure of a batch of several splits it: each command is retried alone, so one bad
  command cannot hold its neighbours back.
- A command alone is tried up to `max_attempts` times, with a growing back-off, and then given
  up on (the consumer dead-letters it).
- An attempt that outlives its deadline (`batch_deadline`, from the statement timeout and the
  number of items) is ended and counts as `DependencyUnavailable`: a database that went silent
  between statements, where no statement timeout runs, is an outage like a stopped one.

The policy knows nothing of messages: `Work` says what an attempt is and what follows it, and
`on_retry` hears of every try again, by reason (the composition root counts them in a metric).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, TypeVar, get_args

import structlog

from worker.app.failures import DependencyUnavailable, TransactionConflict, TransientFailure
from worker.app.outage_log import DatabaseOutageLog
from worker.settings import Settings

log = structlog.stdlib.get_logger("worker.consumer")

# Why a batch or a command is tried again: a concurrent transaction won; a dependency is down
# (one per wait of an outage); a batch of several failed and is tried command by command; a
# command alone failed and is tried once more.
RetryReason = Literal[
    "transaction_conflict", "dependency_unavailable", "batch_split", "command_failed"
]
RETRY_REASONS: Final[tuple[RetryReason, ...]] = get_args(RetryReason)


def _unobserved(_: RetryReason) -> None:
    pass


ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
ItemT_contra = TypeVar("ItemT_contra", contravariant=True)


class Work(Protocol[ItemT_contra, ResultT]):
    async def attempt(self, items: Sequence[ItemT_contra]) -> ResultT:
        """One try of the items together; raises to fail."""

    async def succeeded(self, items: Sequence[ItemT_contra], result: ResultT) -> None:
        """What follows a successful try."""

    async def gave_up(self, item: ItemT_contra, attempts: int, error: Exception) -> None:
        """What follows the last failed try of an item alone."""

    def alone(self, item: ItemT_contra) -> AbstractContextManager[object]:
        """The scope of an item's tries alone: binds its identifiers to every log line."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    attempt_backoff: float = 0.1  # before try n + 1 of a command alone: attempt_backoff * 2**n
    outage_backoff: float = 0.1  # the first wait while a dependency is down, doubled each time
    outage_backoff_max: float = 5.0
    conflict_jitter: float = 0.02  # at most, before retrying after a transaction conflict
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    outages: DatabaseOutageLog = field(default_factory=lambda: DatabaseOutageLog(log))
    statement_timeout: float | None = None  # gives each attempt a deadline; None: no deadline
    on_retry: Callable[[RetryReason], None] = _unobserved  # before each wait or try again

    @classmethod
    def from_settings(
        cls, settings: Settings, on_retry: Callable[[RetryReason], None] = _unobserved
    ) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            outage_backoff_max=settings.retry_max_backoff,
            statement_timeout=settings.db_statement_timeout,
            on_retry=on_retry,
        )

    async def apply(self, items: Sequence[ItemT], work: Work[ItemT, ResultT]) -> None:
        """Run `work` on `items` under this policy, until each item succeeded or was given up."""
        if len(items) > 1:
            try:
                result = await self.through_transient(work, items)
            except Exception as error:
                log.warning("batch_failed_retrying_alone", size=len(items), error=repr(error))
                self.on_retry("batch_split")
                for item in items:
                    await self.apply([item], work)
                return
            await work.succeeded(items, result)
            return
        [item] = items
        with work.alone(item):
            for attempt in range(1, self.max_attempts + 1):
                try:
                    result = await self.through_transient(work, items)
                except Exception as error:
                    if attempt < self.max_attempts:
                        log.warning("command_failed_retrying", attempt=attempt, error=repr(error))
                        self.on_retry("command_failed")
                        await self.sleep(self.attempt_backoff * 2**attempt)
                        continue
                    log.error("command_failed", attempts=attempt, exc_info=error)
                    await work.gave_up(item, attempt, error)
                    return
                await work.succeeded(items, result)
                return

    async def through_transient(
        self, work: Work[ItemT, ResultT], items: Sequence[ItemT]
    ) -> ResultT:
        """Try until the work succeeds or fails for a reason that is not transient."""
        delay = self.outage_backoff
        while True:
            try:
                result = await self._attempt_in_time(work, items)
            except TransactionConflict:
                self.on_retry("transaction_conflict")
                await self.sleep(random.uniform(0, self.conflict_jitter))
                continue
            except TransientFailure as failure:
                self.outages.down(failure)
                self.on_retry("dependency_unavailable")
                await self.sleep(delay)
                delay = min(delay * 2, self.outage_backoff_max)
                continue
            self.outages.up()
            return result

    async def _attempt_in_time(self, work: Work[ItemT, ResultT], items: Sequence[ItemT]) -> ResultT:
        """One attempt, ended at its deadline; a missed deadline is `DependencyUnavailable`."""
        if self.statement_timeout is None:
            return await work.attempt(items)
        scope = asyncio.timeout(batch_deadline(len(items), self.statement_timeout))
        try:
            async with scope:
                return await work.attempt(items)
        except Exception as error:
            if scope.expired():  # whatever the cancelled attempt raised on its way out
                raise DependencyUnavailable("the batch missed its deadline") from error
            raise


def batch_deadline(size: int, statement_timeout: float) -> float:
    """Seconds one attempt at a batch may take, all statements, waits for the pool and the
    rollback included: twice the statement timeout plus 50 ms a command (a command takes ~2 ms
    on an idle 2-core machine, ~15 ms with it oversubscribed six times over). It ends an attempt
    that a silent connection stalls between statements, where no statement timeout runs; the
    commands are held and retried."""
    return 2 * statement_timeout + 0.05 * size
